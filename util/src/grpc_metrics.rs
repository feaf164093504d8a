//! gRPC server metrics under the names grpc-ecosystem's interceptors use, so that the usual
//! dashboards work: `grpc_server_started_total` and `grpc_server_handling_seconds` (labels
//! `grpc_type`, `grpc_service`, `grpc_method`) and `grpc_server_handled_total` (the same and
//! `grpc_code`, e.g. `OK`, `Unavailable`).
//!
//! [`GrpcMetricsLayer`] wraps a tonic server. A call is started when its request arrives and
//! handled when its status is known: from the `grpc-status` header of a trailers-only answer
//! (how tonic answers most errors), else from the trailers at the end of the response body,
//! so a stream counts when it ends and its handling time is the stream's life. An answer
//! dropped before its status (the client went away) counts as `Canceled`.
//!
//! Label values come from the descriptor sets the server registers: each method's service,
//! name and kind (`unary`, `client_stream`, `server_stream`, `bidi_stream`). Any other path is
//! counted under `unknown`, so a caller cannot grow the label set.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use prost::Message as _;

/// Upper bounds (seconds) of the handling-time buckets: our calls take from tens of
/// microseconds (a read) to seconds (a write waiting for a leader).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `grpc_type`, `grpc_service`, `grpc_method`.
type MethodLabels = [(&'static str, &'static str); 3];
/// The method's labels and `grpc_code`.
type HandledLabels = [(&'static str, &'static str); 4];

/// The label of a path no registered service has.
const UNKNOWN: &str = "unknown";

/// Status code names as grpc-go spells them (`codes.Code.String()`), which is what
/// grpc-ecosystem's `grpc_code` label holds, by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN_CODE: usize = 2;

fn code_name(code: usize) -> &'static str {
    CODE_NAMES
        .get(code)
        .copied()
        .unwrap_or(CODE_NAMES[UNKNOWN_CODE])
}

/// The code in a `grpc-status` value, as an index of [`CODE_NAMES`].
fn parse_code(value: Option<&http::HeaderValue>) -> Option<usize> {
    value?.to_str().ok()?.parse().ok()
}

fn handling_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// The counters and histogram of one server, and what it knows of its methods.
#[derive(Debug)]
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// By path (`/package.Service/Method`).
    methods: HashMap<String, MethodLabels>,
}

impl GrpcMetrics {
    /// Registers the server metrics in `registry`, for the methods described in
    /// `descriptor_sets` (encoded `FileDescriptorSet`s, as given to reflection). The label
    /// values of those methods are allocated once and live as long as the process.
    pub fn register(registry: &mut Registry, descriptor_sets: &[&[u8]]) -> Arc<Self> {
        let metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(handling_histogram),
            methods: methods(descriptor_sets),
        };
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            metrics.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a request's arrival to its status (the end of a stream)",
            metrics.handling.clone(),
        );
        Arc::new(metrics)
    }

    fn labels(&self, path: &str) -> MethodLabels {
        self.methods.get(path).copied().unwrap_or([
            ("grpc_type", UNKNOWN),
            ("grpc_service", UNKNOWN),
            ("grpc_method", UNKNOWN),
        ])
    }
}

/// The labels of every method in `descriptor_sets`, by path. A set that does not decode is
/// skipped with a warning (its calls count as `unknown`).
fn methods(descriptor_sets: &[&[u8]]) -> HashMap<String, MethodLabels> {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut methods = HashMap::new();
    for bytes in descriptor_sets {
        let set = match prost_types::FileDescriptorSet::decode(*bytes) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(error = %e, "a descriptor set does not decode; its methods count as unknown");
                continue;
            }
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                let full = if package.is_empty() {
                    name
                } else {
                    format!("{package}.{name}")
                };
                let service_label = leak(full.clone());
                for method in service.method {
                    let kind = match (
                        method.client_streaming.unwrap_or(false),
                        method.server_streaming.unwrap_or(false),
                    ) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    let method_name = method.name.unwrap_or_default();
                    let path = format!("/{full}/{method_name}");
                    methods.insert(
                        path,
                        [
                            ("grpc_type", kind),
                            ("grpc_service", service_label),
                            ("grpc_method", leak(method_name)),
                        ],
                    );
                }
            }
        }
    }
    methods
}

/// A call whose status is not known yet.
struct Pending {
    metrics: Arc<GrpcMetrics>,
    labels: MethodLabels,
    started: Instant,
}

impl Pending {
    fn finish(self, code: usize) {
        let [kind, service, method] = self.labels;
        self.metrics
            .handled
            .get_or_create(&[kind, service, method, ("grpc_code", code_name(code))])
            .inc();
        self.metrics
            .handling
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A tower layer that counts every call in [`GrpcMetrics`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer(pub Arc<GrpcMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let labels = self.metrics.labels(request.uri().path());
        self.metrics.started.get_or_create(&labels).inc();
        let pending = Pending {
            metrics: self.metrics.clone(),
            labels,
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    let pending = match parse_code(response.headers().get("grpc-status")) {
                        Some(code) => {
                            pending.finish(code);
                            None
                        }
                        None => Some(pending),
                    };
                    Ok(response.map(|inner| CountedBody { inner, pending }))
                }
                Err(e) => {
                    pending.finish(UNKNOWN_CODE);
                    Err(e)
                }
            }
        })
    }
}

/// A response body that records its call's status when the trailers pass (or `Canceled`
/// when it is dropped before them).
pub struct CountedBody<B> {
    inner: B,
    pending: Option<Pending>,
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish(CANCELED);
        }
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| parse_code(t.get("grpc-status")).unwrap_or(UNKNOWN_CODE)),
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Some(UNKNOWN_CODE),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            if let Some(pending) = this.pending.take() {
                pending.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer as _, Service as _, ServiceExt as _};

    use super::*;

    /// A body of one data frame and then, when given, trailers.
    struct Answer(Vec<Frame<bytes::Bytes>>);

    impl Body for Answer {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
        }
    }

    fn trailers(code: &str) -> Frame<bytes::Bytes> {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", code.parse().expect("value"));
        Frame::trailers(t)
    }

    async fn drain(mut body: CountedBody<Answer>) {
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.expect("infallible");
        }
    }

    /// The status comes from a trailers-only answer's headers or from the trailers; an answer
    /// dropped before its trailers is `Canceled`; paths of unknown services share one label;
    /// the method's kind comes from the descriptors.
    #[tokio::test]
    async fn calls_count_by_method_and_status() {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(
            &mut registry,
            &[
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                b"not a descriptor set",
            ],
        );
        let service = tower::service_fn(|request: http::Request<()>| async move {
            let mut response = http::Response::new(Answer(vec![Frame::data("x".into())]));
            match request.uri().path() {
                "/grpc.health.v1.Health/Check" => response.body_mut().0.push(trailers("0")),
                "/grpc.health.v1.Health/Watch" => {}
                _ => {
                    response
                        .headers_mut()
                        .insert("grpc-status", "12".parse().expect("value"));
                }
            }
            Ok::<_, Infallible>(response)
        });
        let mut service = GrpcMetricsLayer(metrics).layer(service);
        let call = |path: &str| http::Request::get(path).body(()).expect("request");
        for path in ["/grpc.health.v1.Health/Check", "/x.Y/Z", "/a/b"] {
            let answer = service.ready().await.expect("ready").call(call(path));
            drain(answer.await.expect("answer").into_body()).await;
        }
        let watch = service.ready().await.expect("ready");
        drop(watch.call(call("/grpc.health.v1.Health/Watch")).await);
        let text = crate::metrics::encode(&registry);
        for line in [
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"OK\"} 1",
            "grpc_server_handled_total{grpc_type=\"server_stream\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Watch\",grpc_code=\"Canceled\"} 1",
            "grpc_server_handled_total{grpc_type=\"unknown\",grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"Unimplemented\"} 2",
            "grpc_server_started_total{grpc_type=\"unknown\",grpc_service=\"unknown\",grpc_method=\"unknown\"} 2",
            "grpc_server_handling_seconds_count{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}

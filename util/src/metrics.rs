//! The `--metrics-listen` HTTP listener of every server: `GET /metrics` (a
//! [`prometheus_client`] registry in the Prometheus text format 0.0.4, the one
//! `promtool check metrics` lints), `GET /healthz` (the process answers: 200) and
//! `GET /readyz` (200, or 503 with the caller's one-line reason), until shutdown.
//!
//! Values read from the server's state at scrape time (Raft indexes, nodes by status, a usage
//! sample) are [`Collector`]s that encode constant samples with [`write_gauges`] and
//! [`write_counters`]; counters that the server increments are registered metrics.

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::net::{bind as bind_flag, BindError};

/// The flag every binary names its metrics address with.
pub const FLAG: &str = "metrics-listen";

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One sample of a family: its labels (names fixed in the code, values from the data) and
/// its value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// Whether the server is ready for traffic: `Err` carries the short reason `/readyz` answers.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds the `--metrics-listen` address. Callers bind before starting anything else, so a
/// taken port fails the start rather than a background task.
///
/// # Errors
/// [`BindError`] naming `--metrics-listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    bind_flag(FLAG, addr).await
}

/// `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String fails only when a metric's own encoding fails, which ours do not;
    // a scrape then shows what was written so far rather than nothing.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    out
}

/// Encodes the gauge family `name` with `samples`; nothing when there are none.
///
/// # Errors
/// When the encoder's writer fails.
pub fn write_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = Sample>,
) -> std::fmt::Result {
    write_family(encoder, name, help, MetricType::Gauge, samples)
}

/// Encodes the counter family `name` (shown as `name_total`) with `samples`; nothing when
/// there are none.
///
/// # Errors
/// When the encoder's writer fails.
pub fn write_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = Sample>,
) -> std::fmt::Result {
    write_family(encoder, name, help, MetricType::Counter, samples)
}

fn write_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = Sample>,
) -> std::fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = family.encode_family(&labels)?;
        // Whole numbers (counts, indexes) are written as integers, as a reader expects.
        let whole = value.fract() == 0.0 && value.abs() < 9.0e15;
        match kind {
            MetricType::Counter if whole && value >= 0.0 => {
                ConstCounter::new(value as u64).encode(sample)?
            }
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ if whole => ConstGauge::new(value as i64).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// A [`Collector`] from a closure, for state read at scrape time.
pub struct FnCollector<F>(pub F);

impl<F> std::fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut DescriptorEncoder) -> std::fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        (self.0)(&mut encoder)
    }
}

/// Serves `/metrics` (`registry`, encoded afresh on every scrape), `/healthz` and `/readyz`
/// (from `ready`) on `listener` until `shutdown` is cancelled; then lets the requests in
/// flight finish and returns. The caller spawns it and joins it with its other tasks. A
/// failing server is logged, not returned: the metrics are not worth stopping a replica or a
/// worker for.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    use axum::routing::get;
    use http::{header::CONTENT_TYPE as TYPE, StatusCode};
    const PLAIN: &str = "text/plain; charset=utf-8";
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = encode(&registry);
                async move { ([(TYPE, CONTENT_TYPE)], body) }
            }),
        )
        .route(
            "/healthz",
            get(|| async { ([(TYPE, PLAIN)], "ok\n".to_string()) }),
        )
        .route(
            "/readyz",
            get(move || {
                let answer = match ready() {
                    Ok(()) => (StatusCode::OK, [(TYPE, PLAIN)], "ready\n".to_string()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(TYPE, PLAIN)],
                        format!("not ready: {why}\n"),
                    ),
                };
                async move { answer }
            }),
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "metrics server failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        answer
    }

    /// A scrape gets the registry in the text format with its content type, collectors
    /// included; `/healthz` is 200; `/readyz` follows the readiness function, with its reason
    /// on 503; the server returns once shutdown is cancelled.
    #[tokio::test]
    async fn metrics_health_and_readiness_until_shutdown() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(FnCollector(|e: &mut DescriptorEncoder| {
            write_gauges(e, "up", "Up", [(vec![("a", "b\"c".to_string())], 1.0)])?;
            write_counters(e, "seen", "Seen", [(vec![], 2.0)])?;
            write_gauges(e, "ratio", "Ratio", [(vec![], 0.5)])?;
            write_counters(e, "none", "Never written", [])
        })));
        let ready = Arc::new(AtomicBool::new(false));
        let readiness: Readiness = {
            let ready = ready.clone();
            Arc::new(move || {
                if ready.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("no leader".to_string())
                }
            })
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(registry),
            readiness,
            shutdown.clone(),
        ));
        let answer = get(addr, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(CONTENT_TYPE), "content type: {answer}");
        assert!(
            answer.contains("# TYPE up gauge\nup{a=\"b\\\"c\"} 1\n"),
            "gauge with an escaped label: {answer}"
        );
        assert!(
            answer.contains("# TYPE seen_total counter\nseen_total 2\n"),
            "counter named _total: {answer}"
        );
        assert!(answer.contains("\nratio 0.5\n"), "fractions stay: {answer}");
        assert!(!answer.contains("none"), "empty family left out: {answer}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.ends_with("not ready: no leader\n"), "{not_ready}");
        ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the server stops on shutdown")
            .expect("no panic");
    }

    /// A taken port fails with the flag's name.
    #[tokio::test]
    async fn a_taken_port_names_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let err = bind(taken.local_addr().expect("addr"))
            .await
            .expect_err("taken");
        assert!(
            err.to_string().starts_with("--metrics-listen 127.0.0.1:"),
            "{err}"
        );
    }
}

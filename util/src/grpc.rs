//! gRPC status fixes every dllm server applies: a request over the server's message size
//! limit is answered `RESOURCE_EXHAUSTED`, as the gRPC spec says, instead of tonic's
//! `OUT_OF_RANGE`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// What tonic says when a request message is over the size limit.
const TOO_LARGE: &str = "message length too large";

/// A tower layer that rewrites tonic's answer to an over-size request to `RESOURCE_EXHAUSTED`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeLimitLayer;

impl<S> tower::Layer<S> for SizeLimitLayer {
    type Service = SizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SizeLimit { inner }
    }
}

/// The service of [`SizeLimitLayer`].
#[derive(Clone, Debug)]
pub struct SizeLimit<S> {
    inner: S,
}

/// Turns an over-size `OUT_OF_RANGE` (in the headers of a trailers-only answer, where tonic
/// puts the status of a request it could not decode) into `RESOURCE_EXHAUSTED`.
pub fn fix_status<B>(response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains(TOO_LARGE) || m.contains("message%20length%20too%20large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for SizeLimit<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            fix_status(&mut response);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_over_size_out_of_range_becomes_resource_exhausted() {
        let answer = |code: tonic::Code, message: &str| {
            let mut r = tonic::Status::new(code, message).into_http::<()>();
            fix_status(&mut r);
            r.headers()["grpc-status"]
                .to_str()
                .expect("ascii")
                .to_string()
        };
        let too_large = "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes";
        assert_eq!(answer(tonic::Code::OutOfRange, too_large), "8");
        assert_eq!(
            answer(tonic::Code::OutOfRange, "layer 99 out of range"),
            "11"
        );
        assert_eq!(answer(tonic::Code::NotFound, too_large), "5");
    }
}

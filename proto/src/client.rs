//! The client side of the transport: every dllm binary that calls a replica or a worker makes
//! its channels with [`connect`] on top of a tonic [`Endpoint`](tonic::transport::Endpoint), so
//! what is true of one client connection (TLS, tokens, later) is set up in one place.
//!
//! [`OneFrame`] fixes a cost of tonic's unary calls. tonic sends a request's message as a body
//! that only learns it has ended when polled again, so hyper writes the HTTP/2 HEADERS, the
//! DATA and then an empty DATA frame that ends the stream, usually as three `writev`s, and the
//! server wakes up for each before it can start on the request. A profile of three replicas on
//! loopback showed about four `writev` calls per committed write. Every request body in this
//! API is a single message, so [`OneFrame`] reads it first (it is ready at once) and hands
//! hyper a body that is known to end with it: HEADERS and one DATA frame carrying END_STREAM,
//! written together.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use tonic::body::Body;
use tower::Service;

/// A channel to one server whose unary requests go out as one DATA frame that ends the
/// stream. Cheap to clone; clones share the connection.
pub type Channel = OneFrame<tonic::transport::Channel>;

/// Wraps a tonic channel made from an [`Endpoint`](tonic::transport::Endpoint).
pub fn connect(channel: tonic::transport::Channel) -> Channel {
    OneFrame {
        inner: channel,
        authorization: None,
    }
}

/// Wraps a tonic channel whose every unary request carries `authorization` (e.g.
/// `Bearer <jwt>`) when given.
pub fn connect_with(
    channel: tonic::transport::Channel,
    authorization: Option<http::HeaderValue>,
) -> Channel {
    OneFrame {
        inner: channel,
        authorization,
    }
}

impl<S> OneFrame<S> {
    /// The channel underneath, for client-streaming calls: their request body is a stream of
    /// messages, which [`OneFrame`] would wait to collect to its end.
    pub fn streaming(&self) -> &S {
        &self.inner
    }
}

/// A gRPC client service that sends each request body in one frame (see the module docs).
/// Only for calls whose request is a single message (no client streaming), which is every
/// call of this API.
#[derive(Clone, Debug)]
pub struct OneFrame<S> {
    inner: S,
    /// Sent as the `authorization` header of every request, when set.
    authorization: Option<http::HeaderValue>,
}

impl<S> Service<http::Request<Body>> for OneFrame<S>
where
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        // The service that was polled ready takes this call; its clone waits for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = one_frame(body).await;
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// The body's bytes as a body that ends with its only frame. An encoding error (a message
/// over the size limit) is passed on as the body's error, as tonic would have sent it.
async fn one_frame(body: Body) -> Body {
    if body.is_end_stream() {
        return body;
    }
    match body.collect().await {
        Ok(collected) => Body::new(Full::new(collected.to_bytes())),
        Err(status) => Body::new(StreamBody::new(futures::stream::iter([Err::<
            Frame<Bytes>,
            _,
        >(status)]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_becomes_one_frame_that_ends_the_body() {
        let chunks = futures::stream::iter([
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ]);
        let mut body = one_frame(Body::new(StreamBody::new(chunks))).await;
        assert!(!body.is_end_stream());
        let frame = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(
            frame.into_data().expect("data"),
            Bytes::from_static(b"abcd")
        );
        assert!(body.is_end_stream(), "the data frame must end the stream");
    }

    #[tokio::test]
    async fn an_encoding_error_is_passed_on() {
        let failing = futures::stream::iter([Err::<Frame<Bytes>, _>(tonic::Status::out_of_range(
            "message too large",
        ))]);
        let mut body = one_frame(Body::new(StreamBody::new(failing))).await;
        let error = body.frame().await.expect("a frame").expect_err("the error");
        assert_eq!(error.code(), tonic::Code::OutOfRange);
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty() {
        let body = one_frame(Body::empty()).await;
        assert!(body.is_end_stream());
    }
}

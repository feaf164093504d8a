//! The Prometheus listener: `GET /metrics` answers whatever the caller's render function
//! writes, in the text exposition format, until shutdown.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::net::{bind as bind_flag, BindError};

/// The flag every binary names its metrics address with.
pub const FLAG: &str = "metrics-listen";

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Binds the `--metrics-listen` address. Callers bind before starting anything else, so a
/// taken port fails the start rather than a background task.
///
/// # Errors
/// [`BindError`] naming `--metrics-listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    bind_flag(FLAG, addr).await
}

/// Serves `GET /metrics` on `listener`, with a body fresh from `render` on every scrape, until
/// `shutdown` is cancelled; then lets the scrapes in flight finish and returns. The caller
/// spawns it and joins it with its other tasks. A failing server is logged, not returned: the
/// metrics are not worth stopping a replica or a worker for.
pub async fn serve<F>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render();
            async move { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], body) }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A scrape gets the render function's text with the exposition content type, and the
    /// server returns once shutdown is cancelled.
    #[tokio::test]
    async fn a_scrape_gets_the_rendered_text_until_shutdown() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, || "up 1\n".to_string(), shutdown.clone()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(CONTENT_TYPE), "content type: {answer}");
        assert!(answer.ends_with("up 1\n"), "body: {answer}");
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

//! Server-streaming RPCs: a task that sends one batch per interval until the client goes away
//! or the replica shuts down, so no task outlives its stream.

use std::{future::Future, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ApiError;

/// Shortest interval a stream accepts, in seconds.
pub const MIN_INTERVAL_SECONDS: i32 = 1;
/// Longest interval a stream accepts, in seconds.
pub const MAX_INTERVAL_SECONDS: i32 = 3600;

/// Validates `interval_seconds`.
///
/// # Errors
/// `INVALID_ARGUMENT` outside [`MIN_INTERVAL_SECONDS`]..=[`MAX_INTERVAL_SECONDS`].
pub fn interval(field: &str, seconds: i32) -> Result<Duration, ApiError> {
    if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&seconds) {
        return Err(ApiError::invalid(
            field,
            format!("must be {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}, got {seconds}"),
        ));
    }
    Ok(Duration::from_secs(seconds as u64))
}

/// A stream that sends what `tick` makes, first at once and then every `every`. An error from
/// `tick` is sent and ends the stream.
pub fn periodic<T, F, Fut>(
    every: Duration,
    shutdown: CancellationToken,
    mut tick: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<T>, Status>> + Send,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match tick().await {
                Ok(items) => {
                    for item in items {
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

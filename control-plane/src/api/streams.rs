//! Server-streaming RPCs: a task that sends one batch per interval until the client goes away
//! or the replica shuts down, so no task outlives its stream.

use std::{future::Future, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ApiError;

/// A replica's Raft metrics, which say when a new entry is applied.
pub type RaftMetricsWatch =
    tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>;

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

/// Least time between two sends prompted by state changes.
const MIN_PROMPT_GAP: Duration = Duration::from_millis(200);

/// A stream that sends what `tick` makes, first at once and then every `every`, and also
/// promptly (at most every 200 ms) when `changes` reports a newly applied log entry; `tick`
/// is told which (`true`: the interval's). An error from `tick` is sent and ends the stream.
pub fn periodic<T, F, Fut>(
    every: Duration,
    shutdown: CancellationToken,
    changes: Option<RaftMetricsWatch>,
    mut tick: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnMut(bool) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<T>, Status>> + Send,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = changes;
        let applied = |m: &RaftMetricsWatch| m.borrow().last_applied.map(|l| l.index);
        let mut sent_at = changes.as_ref().and_then(applied);
        loop {
            let changed = async {
                match changes.as_mut() {
                    Some(c) => loop {
                        if c.changed().await.is_err() {
                            return std::future::pending().await;
                        }
                        if applied(c) != sent_at {
                            return;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let timer = tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => true,
                _ = changed => {
                    tokio::time::sleep(MIN_PROMPT_GAP).await;
                    false
                }
            };
            sent_at = changes.as_ref().and_then(applied);
            match tick(timer).await {
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

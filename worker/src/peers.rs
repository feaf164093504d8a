//! The worker's view of the other members, fetched from the control plane when someone asks
//! (`GetPeers` on the worker's port) and kept for [`MAX_AGE`].
//!
//! A worker used to refresh this view every ten heartbeats whether anyone looked or not: at
//! 10,000 workers that was 1,000 `DiscoverNodes` a second, each answering 10,000 nodes, for a
//! list almost nobody reads. Now the cost follows the readers: a worker nobody asks costs the
//! control plane nothing; one asked continuously costs at most one paged fetch per
//! [`MAX_AGE`], however many callers (callers queued behind a fetch share it, slow or failed).
//! A caller is served only a fetch that began less than [`MAX_AGE`] before its call: when no
//! such fetch works it gets `UNAVAILABLE` with the reason, not an old list that looks current.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use dllm_proto::client::Channel;
use dllm_proto::pb::{self, discovery_service_client::DiscoveryServiceClient};
use tokio::time::Instant;
use tonic::Status;

/// How long a fetched view is served before the next caller fetches again.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// Nodes asked per `DiscoverNodes` page: about 300 KB of answer, well under gRPC's 4 MiB.
pub const PAGE: i32 = 1_000;
/// The most pages one fetch reads (10,000,000 nodes): a bound on a server that never ends.
const MAX_PAGES: usize = 10_000;

/// The outcome of the last fetch and when it began.
struct Fetched {
    at: Instant,
    outcome: Result<Arc<Vec<pb::NodeInfo>>, Status>,
}

/// The peer view and the control-plane replica to fetch it from.
#[derive(Default)]
pub struct Peers {
    /// The replica the agent talks to now; `None` until it first reached one.
    control: Mutex<Option<DiscoveryServiceClient<Channel>>>,
    /// The last fetch; the async lock makes concurrent callers wait for one fetch.
    last: tokio::sync::Mutex<Option<Fetched>>,
}

impl Peers {
    /// Fetches from `client` from now on (the agent calls this when a replica answers it).
    pub fn use_replica(&self, client: &DiscoveryServiceClient<Channel>) {
        *self.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    }

    /// The other members of the cluster as of at most [`MAX_AGE`] ago, `me` left out.
    ///
    /// # Errors
    /// `UNAVAILABLE` before the worker reached a replica, or when the fetch fails.
    pub async fn get(&self, me: &str) -> Result<Arc<Vec<pb::NodeInfo>>, Status> {
        let client = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.get_with(
            |request| {
                let client = client.clone();
                async move {
                    let Some(mut client) = client else {
                        return Err(Status::unavailable(
                            "this worker has not reached the control plane yet; ask a replica",
                        ));
                    };
                    Ok(client.discover_nodes(request).await?.into_inner())
                }
            },
            me,
        )
        .await
    }

    /// [`Peers::get`] with `fetch` asking the control plane for one page.
    async fn get_with<F, Fut>(&self, fetch: F, me: &str) -> Result<Arc<Vec<pb::NodeInfo>>, Status>
    where
        F: Fn(pb::DiscoveryRequest) -> Fut,
        Fut: Future<Output = Result<pb::DiscoveryResponse, Status>>,
    {
        // A fetch that began less than MAX_AGE before this call is fresh enough, however long
        // it took: callers queued behind a slow fetch take its list, not a fetch each. A
        // failure is shared only by the callers that waited for it; a later one tries again.
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some(f) = last.as_ref() {
            match &f.outcome {
                Ok(peers) if f.at + MAX_AGE > arrived => return Ok(peers.clone()),
                Err(e) if f.at >= arrived => return Err(e.clone()),
                _ => {}
            }
        }
        let at = Instant::now();
        let outcome = fetch_all(fetch, me).await.map(Arc::new).map_err(|e| {
            Status::unavailable(format!(
                "could not list this worker's peers from the control plane: {}",
                e.message()
            ))
        });
        *last = Some(Fetched {
            at,
            outcome: outcome.clone(),
        });
        outcome
    }
}

/// Every member but `me`, page by page, in node-id order.
async fn fetch_all<F, Fut>(fetch: F, me: &str) -> Result<Vec<pb::NodeInfo>, Status>
where
    F: Fn(pb::DiscoveryRequest) -> Fut,
    Fut: Future<Output = Result<pb::DiscoveryResponse, Status>>,
{
    let mut peers = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let page = fetch(pb::DiscoveryRequest {
            requester_id: me.to_string(),
            limit: PAGE,
            page_token,
            ..Default::default()
        })
        .await?;
        peers.extend(page.discovered_nodes);
        if page.next_page_token.is_empty() {
            return Ok(peers);
        }
        page_token = page.next_page_token;
    }
    Err(Status::internal(format!(
        "the member list did not end after {MAX_PAGES} pages"
    )))
}

#[cfg(test)]
mod tests;

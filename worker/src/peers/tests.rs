use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A control plane holding `n` nodes besides `me`, answering pages as the replicas do
/// (node-id order, `after:<id>` tokens, the requester left out) and counting the calls.
struct Fake {
    ids: Vec<String>,
    calls: AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
    /// How long a page takes.
    delay: Mutex<Duration>,
}

impl Fake {
    fn new(n: usize) -> Self {
        let mut ids: Vec<String> = (0..n).map(|i| format!("n{i:05}")).collect();
        ids.push("me".to_string());
        ids.sort();
        Self {
            ids,
            calls: AtomicUsize::new(0),
            fail: Default::default(),
            delay: Mutex::new(Duration::from_millis(50)),
        }
    }

    async fn page(&self, req: pb::DiscoveryRequest) -> Result<pb::DiscoveryResponse, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Long enough for other callers to arrive while this one is out.
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(Status::unavailable("no leader"));
        }
        let after = req.page_token.strip_prefix("after:").unwrap_or("");
        let rest: Vec<&String> = self
            .ids
            .iter()
            .filter(|id| id.as_str() > after && **id != req.requester_id)
            .collect();
        let limit = usize::try_from(req.limit).expect("limit").max(1);
        let page: Vec<pb::NodeInfo> = rest
            .iter()
            .take(limit)
            .map(|id| pb::NodeInfo {
                node_id: id.to_string(),
                ..Default::default()
            })
            .collect();
        let next_page_token = if rest.len() > limit {
            format!("after:{}", page.last().expect("a full page").node_id)
        } else {
            String::new()
        };
        Ok(pb::DiscoveryResponse {
            discovered_nodes: page,
            success: true,
            next_page_token,
            ..Default::default()
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn get(peers: &Peers, fake: &Fake) -> Result<Arc<Vec<pb::NodeInfo>>, Status> {
    peers.get_with(|req| fake.page(req), "me").await
}

/// Every other member, once, in order, over as many pages as it takes; the worker itself is
/// not among them.
#[tokio::test(start_paused = true)]
async fn the_view_is_every_other_member_over_pages() {
    let fake = Fake::new(2 * PAGE as usize + 7);
    let peers = Peers::default();
    let got = get(&peers, &fake).await.expect("peers");
    let ids: Vec<&str> = got.iter().map(|n| n.node_id.as_str()).collect();
    let want: Vec<&str> = fake
        .ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != "me")
        .collect();
    assert_eq!(ids, want);
    assert_eq!(fake.calls(), 3, "three pages");
}

/// Nobody asking costs nothing; callers within MAX_AGE share one fetch, concurrent ones
/// included; the first caller after MAX_AGE fetches again.
#[tokio::test(start_paused = true)]
async fn callers_within_max_age_share_one_fetch() {
    let fake = Fake::new(10);
    let peers = Peers::default();
    assert_eq!(fake.calls(), 0);
    let answers = futures::future::join_all((0..8).map(|_| get(&peers, &fake))).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().is_ok_and(|p| p.len() == 10)));
    assert_eq!(fake.calls(), 1, "eight concurrent callers, one fetch");
    get(&peers, &fake).await.expect("peers");
    assert_eq!(fake.calls(), 1, "within MAX_AGE: no fetch");
    tokio::time::advance(MAX_AGE).await;
    get(&peers, &fake).await.expect("peers");
    assert_eq!(fake.calls(), 2, "after MAX_AGE: a fetch");
}

/// A view older than MAX_AGE is never served: when the control plane cannot answer, the
/// caller hears UNAVAILABLE and why; the next fetch that works is served again.
#[tokio::test(start_paused = true)]
async fn an_old_view_is_not_served_when_the_fetch_fails() {
    let fake = Fake::new(3);
    let peers = Peers::default();
    get(&peers, &fake).await.expect("peers");
    fake.fail.store(true, Ordering::SeqCst);
    tokio::time::advance(MAX_AGE).await;
    let e = get(&peers, &fake).await.expect_err("stale");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("no leader"), "{}", e.message());
    fake.fail.store(false, Ordering::SeqCst);
    assert_eq!(get(&peers, &fake).await.expect("peers").len(), 3);
}

/// Before the agent reached any replica there is nobody to ask.
#[tokio::test]
async fn before_the_first_replica_answers_the_view_is_unavailable() {
    let e = Peers::default().get("me").await.expect_err("no replica");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().contains("not reached the control plane"),
        "{}",
        e.message()
    );
}

/// A fetch slower than MAX_AGE still serves every caller that queued behind it, and a failed
/// one fails them all at once (each does not try again in turn); a caller after the failure
/// tries again.
#[tokio::test(start_paused = true)]
async fn callers_queued_behind_a_slow_or_failed_fetch_share_it() {
    let fake = Fake::new(3 * PAGE as usize);
    *fake.delay.lock().expect("delay") = MAX_AGE;
    let peers = Peers::default();
    let answers = futures::future::join_all((0..8).map(|_| get(&peers, &fake))).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().is_ok_and(|p| p.len() == 3 * PAGE as usize)));
    assert_eq!(
        fake.calls(),
        3,
        "one fetch of three pages, each MAX_AGE long"
    );

    tokio::time::advance(MAX_AGE).await;
    fake.fail.store(true, Ordering::SeqCst);
    let answers = futures::future::join_all((0..8).map(|_| get(&peers, &fake))).await;
    assert!(answers.iter().all(|a| a
        .as_ref()
        .is_err_and(|e| e.code() == tonic::Code::Unavailable)));
    assert_eq!(fake.calls(), 4, "one failed page for eight callers");
    fake.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        get(&peers, &fake).await.expect("peers").len(),
        3 * PAGE as usize
    );
    assert_eq!(fake.calls(), 7, "a later caller tries again");
}

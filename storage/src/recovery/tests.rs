//! Restoring an empty store from a saved state, and forcing a survivor's store into a
//! one-voter cluster.

use std::collections::BTreeMap;

use openraft::{
    storage::{RaftLogStorage, RaftStateMachine},
    BasicNode, CommittedLeaderId, LogId, RaftSnapshotBuilder,
};

use super::*;
use crate::test_support::{entry, log_id, open_kv, KvData};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn members() -> BTreeMap<u64, String> {
    (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", 9000 + id)))
        .collect()
}

/// A restored store opens with exactly the saved state, applied up to the given log id, with
/// the new membership as its snapshot's; a store that holds anything is refused untouched.
#[test]
fn restore_makes_an_empty_store_begin_at_the_saved_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("raft");
    let saved = KvData(
        (0..100)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect(),
    );
    let at = LogId::new(CommittedLeaderId::new(0, 0), 4242);
    let data = bincode::serialize(&saved).expect("encode");
    restore(&store, at, voters(&members()), data.clone(), "abc123").expect("restore");
    assert_eq!(restored_from(&store).as_deref(), Some("abc123"));
    runtime().block_on(async {
        let (mut log, mut sm) = open_kv(&store).expect("a restored store opens");
        let (applied, membership) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(at), "applied up to the saved point");
        assert_eq!(membership.log_id(), &Some(at));
        let voter_ids: Vec<u64> = membership.membership().voter_ids().collect();
        assert_eq!(
            voter_ids,
            vec![1, 2, 3],
            "the new cluster's members, all voters"
        );
        assert_eq!(sm.state().read(|d| d.0.clone()), saved.0, "the saved state");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_log_id, None,
            "no log yet: openraft purges up to the snapshot"
        );
        assert_eq!(log.read_vote().await.expect("vote"), None);
        log.flush().await.expect("flush");
    });
    let err = restore(&store, at, voters(&members()), data, "abc123")
        .expect_err("the store is not empty any more");
    assert!(matches!(err, RecoveryError::NotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// A survivor whose log runs past its snapshot and past its committed id keeps every entry:
/// after the force it holds the snapshot's state plus every entry of its log, as a single
/// voter, at a term above any it saw, with nothing left to apply and nothing in the log; a
/// second force on the same store is refused.
#[test]
fn force_new_cluster_keeps_every_entry_and_leaves_one_voter() {
    let dir = tempfile::tempdir().expect("temp dir");
    runtime().block_on(async {
        let (mut log, mut sm) = open_kv(dir.path()).expect("open");
        log.save_vote(&openraft::Vote::new(3, 2))
            .await
            .expect("vote");
        log.append_durably((1..=80).map(entry))
            .await
            .expect("append");
        sm.apply((1..=30).map(entry)).await.expect("apply");
        sm.build_snapshot().await.expect("snapshot at 30");
        sm.apply((31..=50).map(entry)).await.expect("apply");
        log.save_committed(Some(log_id(60)))
            .await
            .expect("committed");
        log.flush().await.expect("flush");
        let node = BasicNode::new("127.0.0.1:9001");
        let forced = force_new_cluster(&log, &sm, 1, node.clone())
            .await
            .expect("force");
        assert_eq!(forced.applied_before.map(|l| l.index), Some(50));
        assert_eq!(forced.committed_before.map(|l| l.index), Some(60));
        assert_eq!(forced.last_before.map(|l| l.index), Some(80));
        assert_eq!(forced.applied_from_log, 30, "entries 51..=80");
        assert_eq!(forced.new_log_id.index, 81);
        assert_eq!(
            forced.new_log_id.leader_id.term, 4,
            "above the vote's term 3"
        );
        log.flush().await.expect("flush");
        let again = force_new_cluster(&log, &sm, 1, node).await;
        assert!(
            matches!(again, Err(RecoveryError::AlreadyForced { .. })),
            "{again:?}"
        );
    });
    runtime().block_on(async {
        let (mut log, mut sm) = open_kv(dir.path()).expect("a forced store opens");
        let (applied, membership) = sm.applied_state().await.expect("applied");
        assert_eq!(applied.map(|l| l.index), Some(81));
        let voter_ids: Vec<u64> = membership.membership().voter_ids().collect();
        assert_eq!(voter_ids, vec![1], "one voter: itself");
        let keys = sm.state().read(|d| d.0.len());
        assert_eq!(keys, 80, "every entry of the log is in the state");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(81));
        assert!(
            log.try_get_log_entries(0..).await.expect("read").is_empty(),
            "the log behind the new snapshot is purged"
        );
        let vote = log.read_vote().await.expect("vote").expect("a vote");
        assert_eq!(vote.leader_id().get_term(), 4);
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id_at(4, 1, 81))
        );
    });
}

/// A log tail that does not follow the applied entry (a lower term after it: left by a crash
/// between a snapshot's install and the truncation of a conflicting tail) is not applied, and
/// the new log starts past every index the store held.
#[test]
fn force_new_cluster_drops_a_tail_that_does_not_follow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let at = |term: u64, index: u64| {
        let mut e = entry(index);
        e.log_id = log_id_at(term, 1, index);
        e
    };
    runtime().block_on(async {
        let (mut log, mut sm) = open_kv(dir.path()).expect("open");
        log.append_durably((1..=50).map(|i| at(2, i)))
            .await
            .expect("append");
        sm.apply((1..=50).map(|i| at(2, i))).await.expect("apply");
        log.append_durably((51..=60).map(|i| at(1, i)))
            .await
            .expect("a stale lower-term tail");
        log.flush().await.expect("flush");
        let forced = force_new_cluster(&log, &sm, 1, BasicNode::new("a:1"))
            .await
            .expect("force");
        assert_eq!(forced.applied_from_log, 0, "nothing of the stale tail");
        assert_eq!(forced.new_log_id.index, 61, "past every index held");
        assert_eq!(sm.state().read(|d| d.0.len()), 50);
        assert!(
            log.try_get_log_entries(0..).await.expect("read").is_empty(),
            "the stale tail is purged with the rest"
        );
    });
}

/// A store with nothing in it has nothing to recover.
#[test]
fn force_new_cluster_on_an_empty_store_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    runtime().block_on(async {
        let (log, sm) = open_kv(dir.path()).expect("open");
        let err = force_new_cluster(&log, &sm, 1, BasicNode::new("a:1"))
            .await
            .expect_err("nothing to recover");
        assert!(
            matches!(err, RecoveryError::NothingToRecover { .. }),
            "{err}"
        );
    });
}

fn log_id_at(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

//! The first member nodes by id, kept up to date as the state changes: what a
//! RegisterWithCluster answer lists in `existing_nodes` (the first `bound` other members) and
//! how many members there are, without a pass over the fleet per join.
//!
//! [`FirstMembers`] holds the `bound + 1` smallest member ids (one more than an answer lists,
//! so the joining node can be left out) and the member count, as of a position in the state's
//! change feed. Each answer first catches up with the nodes the feed names since then: a node
//! that became a member goes in if its id is small enough (the largest then drops out), one
//! that stopped being a member comes out and the count goes down. Only when a member among the
//! held ids leaves while more members exist (the next id is not known), when a snapshot
//! replaced the state, or when the feed no longer reaches back, is the set rebuilt from every
//! node. The nodes themselves are read from the state when answering, so they are current.

use std::{
    collections::{BTreeSet, BinaryHeap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use crate::state::{ClusterState, Node, NodeChanges, NodeMap, NodeStatus};

fn member(n: &Node) -> bool {
    n.status != NodeStatus::Left
}

/// The first members by id and the member count, shared by a replica's joins.
pub struct FirstMembers {
    /// How many ids are held: an answer's bound plus one.
    keep: usize,
    held: Mutex<Option<Held>>,
    /// Passes over every node so far.
    rebuilds: AtomicU64,
}

struct Held {
    feed: NodeChanges,
    at: u64,
    /// The nodes as of `at`, to tell what each changed node was.
    nodes: NodeMap,
    /// The `keep` smallest member ids (all of them when there are fewer).
    first: BTreeSet<String>,
    members: usize,
}

impl Held {
    /// Everything from the nodes of `s` (a pass over every node).
    fn build(s: &ClusterState, keep: usize) -> Self {
        let mut heap: BinaryHeap<&str> = BinaryHeap::with_capacity(keep + 1);
        let mut members = 0;
        for n in s.nodes.values().filter(|n| member(n)) {
            members += 1;
            if heap.len() < keep {
                heap.push(&n.node_id);
            } else if heap.peek().is_some_and(|max| n.node_id.as_str() < *max) {
                heap.pop();
                heap.push(&n.node_id);
            }
        }
        Held {
            feed: s.node_changes.clone(),
            at: s.node_changes.end(),
            nodes: s.nodes.clone(),
            first: heap.into_iter().map(String::from).collect(),
            members,
        }
    }

    /// Catches up with `s` through the feed; `false` when it cannot (rebuild instead).
    fn catch_up(&mut self, s: &ClusterState, keep: usize) -> bool {
        if !self.feed.same(&s.node_changes) {
            return false;
        }
        let Some((ids, end)) = self.feed.since(self.at) else {
            return false;
        };
        let ids: HashSet<String> = ids.into_iter().collect();
        for id in ids {
            let was = self.nodes.get(&id).is_some_and(member);
            let is = s.nodes.get(&id).is_some_and(member);
            match (was, is) {
                (false, true) => {
                    self.members += 1;
                    let fits =
                        self.first.len() < keep || self.first.last().is_some_and(|max| id < *max);
                    if fits {
                        self.first.insert(id);
                        if self.first.len() > keep {
                            self.first.pop_last();
                        }
                    }
                }
                (true, false) => {
                    self.members -= 1;
                    // A held id gone while members beyond the held ones exist: which member
                    // comes next is not known here.
                    if self.first.remove(&id) && self.members > self.first.len() {
                        return false;
                    }
                }
                _ => {}
            }
        }
        self.at = end;
        self.nodes = s.nodes.clone();
        true
    }
}

impl FirstMembers {
    /// Keeps what an answer of at most `bound` nodes needs (`bound` > 0).
    pub fn new(bound: usize) -> Self {
        Self {
            keep: bound + 1,
            held: Mutex::new(None),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// The first `bound` members of `s` by id other than `except`, and how many members
    /// other than `except` there are.
    pub fn answer<'a>(&self, s: &'a ClusterState, except: &str) -> (Vec<&'a Node>, usize) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = match held.as_mut() {
            Some(h) => h.catch_up(s, self.keep),
            None => false,
        };
        if !fresh {
            self.rebuilds.fetch_add(1, Ordering::Relaxed);
            *held = Some(Held::build(s, self.keep));
        }
        let h = held.as_ref().expect("just built");
        let nodes: Vec<&Node> = h
            .first
            .iter()
            .filter(|id| id.as_str() != except)
            .filter_map(|id| s.nodes.get(id))
            .take(self.keep - 1)
            .collect();
        let except_is_member = s.nodes.get(except).is_some_and(member);
        (nodes, h.members - usize::from(except_is_member))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::state::{test_support::spec, Command};

    /// What the answer must be: the first `bound` other members by id, and their count.
    fn naive(s: &ClusterState, except: &str, bound: usize) -> (Vec<String>, usize) {
        let others: Vec<&Node> = s.members().filter(|n| n.node_id != except).collect();
        let first = others
            .iter()
            .take(bound)
            .map(|n| n.node_id.clone())
            .collect();
        (first, others.len())
    }

    fn join(s: &mut ClusterState, id: &str, memory_mb: i64) {
        s.apply(Command::RegisterNode {
            spec: spec(id, memory_mb),
            now_ms: 1,
        });
    }

    fn leave(s: &mut ClusterState, id: &str) {
        s.apply(Command::LeaveNode {
            node_id: id.into(),
            now_ms: 2,
        });
    }

    #[derive(Clone, Debug)]
    enum Op {
        Join(u8),
        Leave(u8),
        /// The state rebuilt from its encoding (a snapshot installed): a new feed.
        Rebuild,
        Ask(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..40).prop_map(Op::Join),
            2 => (0u8..40).prop_map(Op::Leave),
            1 => Just(Op::Rebuild),
            3 => (0u8..40).prop_map(Op::Ask),
        ]
    }

    proptest! {
        /// Through joins, leaves (of held ids too) and snapshots, every answer equals a pass
        /// over the whole state.
        #[test]
        fn answers_equal_a_pass_over_every_node(
            ops in prop::collection::vec(op(), 1..120),
            bound in 1usize..6,
        ) {
            let first = FirstMembers::new(bound);
            let mut s = ClusterState::default();
            let id = |n: &u8| format!("n{n:02}");
            for op in &ops {
                match op {
                    Op::Join(n) => join(&mut s, &id(n), 1024),
                    Op::Leave(n) => leave(&mut s, &id(n)),
                    Op::Rebuild => {
                        let bytes = bincode::serialize(&s).expect("encode");
                        s = bincode::deserialize(&bytes).expect("decode");
                    }
                    Op::Ask(n) => {
                        let (nodes, count) = first.answer(&s, &id(n));
                        let ids: Vec<String> = nodes.iter().map(|n| n.node_id.clone()).collect();
                        prop_assert_eq!((ids, count), naive(&s, &id(n), bound));
                    }
                }
            }
        }
    }

    /// Re-registrations, a newcomer and a leave after the held ids cost no pass over every
    /// node; a held member leaving does.
    #[test]
    fn a_join_storm_costs_no_pass_over_the_fleet() {
        let first = FirstMembers::new(2);
        let mut s = ClusterState::default();
        for i in 0..100 {
            join(&mut s, &format!("n{i:03}"), 1024);
        }
        first.answer(&s, "n050");
        for i in 0..100 {
            join(&mut s, &format!("n{i:03}"), 2048);
            let (nodes, count) = first.answer(&s, &format!("n{i:03}"));
            assert_eq!((nodes.len(), count), (2, 99));
        }
        join(&mut s, "a-first", 1024);
        leave(&mut s, "n099");
        let (nodes, count) = first.answer(&s, "n000");
        assert_eq!(nodes[0].node_id, "a-first");
        assert_eq!(count, 99);
        assert_eq!(
            first.rebuilds.load(Ordering::Relaxed),
            1,
            "one pass, at the start"
        );
        leave(&mut s, "a-first");
        let (nodes, _) = first.answer(&s, "n000");
        assert_eq!(nodes[0].node_id, "n001");
        assert_eq!(first.rebuilds.load(Ordering::Relaxed), 2);
    }
}

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::state::{NodeStatus, Resources};

fn node(id: &str) -> Node {
    Node {
        node_id: id.to_string(),
        address: "10.0.0.1".into(),
        port: 9000,
        resources: Resources {
            cpu_cores: 1,
            memory_mb: 1024,
            gpus: Vec::new(),
            max_layers: 1,
        },
        used_layers: 0,
        status: NodeStatus::Healthy,
        last_seen_ms: 0,
        registered_at_ms: 0,
        generation: 1,
    }
}

fn ids(page: &[&Node]) -> Vec<String> {
    page.iter().map(|n| n.node_id.clone()).collect()
}

#[test]
fn bad_limits_and_tokens_name_their_field() {
    for (limit, token, field) in [
        (-1, "", "limit"),
        (MAX_PAGE as i32 + 1, "", "limit"),
        (10, "w-7", "page_token"),
        (10, "after:", "page_token"),
        (10, "after:a b", "page_token"),
    ] {
        match Page::parse(limit, token) {
            Err(ApiError::InvalidArgument { field: f, .. }) => assert_eq!(f, field, "{token}"),
            other => panic!("{limit} {token:?}: {other:?}"),
        }
    }
    assert_eq!(Page::parse(0, "").expect("all"), Page::default());
}

#[test]
fn pages_in_order_then_no_token() {
    let nodes: Vec<Node> = ["c", "a", "e", "b", "d"].iter().map(|i| node(i)).collect();
    let page = Page::parse(2, "").expect("page");
    let (first, token) = page.select(nodes.iter());
    assert_eq!(ids(&first), ["a", "b"]);
    assert_eq!(token, "after:b");
    let (second, token) = Page::parse(2, &token).expect("page").select(nodes.iter());
    assert_eq!(ids(&second), ["c", "d"]);
    let (third, token) = Page::parse(2, &token).expect("page").select(nodes.iter());
    assert_eq!(ids(&third), ["e"]);
    assert_eq!(token, "", "the last page");
    let (exact, token) = Page::parse(5, "").expect("page").select(nodes.iter());
    assert_eq!(
        (exact.len(), token.as_str()),
        (5, ""),
        "no empty page after a full one"
    );
    let (all, token) = Page::default().select(nodes.iter());
    assert_eq!((ids(&all).len(), token.as_str()), (5, ""));
}

proptest! {
    /// Paging while nodes join and leave between pages returns every node that was there
    /// from the first page to the last exactly once, in order, and nothing that never was.
    #[test]
    fn every_node_present_throughout_exactly_once(
        initial in proptest::collection::btree_set(0u32..400, 0..120),
        limit in 1usize..40,
        churn in proptest::collection::vec((0u32..400, any::<bool>()), 0..60),
    ) {
        let name = |i: u32| format!("n{i:03}");
        let mut present: HashMap<String, Node> =
            initial.iter().map(|&i| (name(i), node(&name(i)))).collect();
        let mut throughout: BTreeSet<String> = present.keys().cloned().collect();
        let mut ever: BTreeSet<String> = throughout.clone();
        let mut seen: Vec<String> = Vec::new();
        let mut token = String::new();
        let mut churn = churn.into_iter();
        loop {
            let page = Page::parse(limit as i32, &token).expect("valid");
            let (nodes, next) = page.select(present.values());
            prop_assert!(nodes.len() <= limit);
            seen.extend(ids(&nodes));
            if next.is_empty() {
                break;
            }
            token = next;
            // Some joins and leaves before the next page.
            for (i, join) in churn.by_ref().take(3) {
                let id = name(i);
                if join {
                    present.entry(id.clone()).or_insert_with(|| node(&id));
                    ever.insert(id);
                } else {
                    present.remove(&id);
                    throughout.remove(&id);
                }
            }
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        prop_assert_eq!(unique.len(), seen.len(), "no node twice: {:?}", seen);
        prop_assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {:?}", seen);
        prop_assert!(throughout.is_subset(&unique), "missing {:?}", throughout.difference(&unique).collect::<Vec<_>>());
        prop_assert!(unique.is_subset(&ever));
    }
}

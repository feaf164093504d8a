//! Pages of a node list (GetNodeList, DiscoverNodes) in node-id order, chosen without
//! copying or sorting the fleet: one pass over the node map keeps the `limit + 1` smallest ids
//! after the page token in a bounded heap (O(n log limit)), so a page of a 100,000-node list
//! costs one scan and a few hundred comparisons per kept node, not a sort of every node.
//!
//! A page token is the last node id of the page before (`after:<node_id>`): the next page
//! holds the nodes whose ids sort after it. Paging while nodes join and leave therefore
//! returns every node that was a member throughout exactly once, in order; a node that joins
//! with an id before the token is not on later pages (the list is as of each page's read).

use std::collections::BinaryHeap;

use crate::{convert, error::ApiError, state::Node};

/// The most nodes one page may hold.
pub const MAX_PAGE: usize = 10_000;

const TOKEN_PREFIX: &str = "after:";

/// Which part of the list a request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Only nodes whose ids sort after this one.
    after: Option<String>,
    /// At most this many; `None`: all (what clients that predate paging get).
    limit: Option<usize>,
}

impl Page {
    /// From a request's `limit` (0: no limit) and `page_token` ("" for the first page).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming `limit` (negative, or over [`MAX_PAGE`]) or `page_token` (not
    /// one this server gave out).
    pub fn parse(limit: i32, page_token: &str) -> Result<Self, ApiError> {
        let limit = match usize::try_from(limit) {
            Ok(0) => None,
            Ok(n) if n <= MAX_PAGE => Some(n),
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be 0 (no limit) to {MAX_PAGE}, not {limit}"),
                ))
            }
        };
        let after = match page_token {
            "" => None,
            token => {
                let id = token.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
                    ApiError::invalid("page_token", "not a token this server gave out")
                })?;
                Some(convert::node_id("page_token", id)?)
            }
        };
        Ok(Self { after, limit })
    }

    /// The page of `nodes` (any order) in node-id order, and the token of the next page when
    /// more nodes follow it.
    pub fn select<'a>(&self, nodes: impl Iterator<Item = &'a Node>) -> (Vec<&'a Node>, String) {
        let after = |n: &&Node| self.after.as_deref().is_none_or(|a| n.node_id.as_str() > a);
        let Some(limit) = self.limit else {
            let mut all: Vec<&Node> = nodes.filter(after).collect();
            all.sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
            return (all, String::new());
        };
        // A max-heap of the limit + 1 smallest ids seen: the extra one says whether more follow.
        let mut heap: BinaryHeap<ById<'a>> = BinaryHeap::with_capacity(limit + 1);
        for node in nodes.filter(after) {
            if heap.len() <= limit {
                heap.push(ById(node));
            } else if heap.peek().is_some_and(|top| node.node_id < top.0.node_id) {
                heap.pop();
                heap.push(ById(node));
            }
        }
        let more = heap.len() > limit;
        let mut page: Vec<&Node> = heap.into_sorted_vec().into_iter().map(|n| n.0).collect();
        page.truncate(limit);
        let next = match (more, page.last()) {
            (true, Some(last)) => format!("{TOKEN_PREFIX}{}", last.node_id),
            _ => String::new(),
        };
        (page, next)
    }
}

/// A node ordered by its id.
struct ById<'a>(&'a Node);

impl PartialEq for ById<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.node_id == other.0.node_id
    }
}
impl Eq for ById<'_> {}
impl PartialOrd for ById<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.node_id.cmp(&other.0.node_id)
    }
}

#[cfg(test)]
mod tests;

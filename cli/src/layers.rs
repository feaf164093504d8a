//! Where a model's layers are: its `node_assignments` (`worker-1:0-45`, one contiguous range
//! per entry, as `control-plane/src/convert.rs` writes them) read back into ranges, and the
//! owner of every layer, so `dllm watch` can say which layers moved and the TUI can draw
//! them in layer order.

/// One contiguous range of layers on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// First layer.
    pub first: u32,
    /// Last layer (inclusive).
    pub last: u32,
    /// The node holding them.
    pub node: String,
}

/// The ranges of `assignments`, in layer order; entries that do not read as
/// `node:first-last` are skipped (a newer server's format is shown as unplaced, not crashed on).
pub fn ranges(assignments: &[String]) -> Vec<Range> {
    let mut out: Vec<Range> = assignments
        .iter()
        .filter_map(|a| {
            let (node, range) = a.rsplit_once(':')?;
            let (first, last) = range.split_once('-')?;
            let (first, last) = (first.parse().ok()?, last.parse().ok()?);
            (first <= last).then(|| Range {
                first,
                last,
                node: node.to_string(),
            })
        })
        .collect();
    out.sort_by_key(|r| r.first);
    out
}

/// The node holding each layer `0..layer_count` (`None`: no node).
pub fn owners(ranges: &[Range], layer_count: u32) -> Vec<Option<&str>> {
    let mut out = vec![None; layer_count as usize];
    for r in ranges {
        for layer in r.first..=r.last.min(layer_count.saturating_sub(1)) {
            out[layer as usize] = Some(r.node.as_str());
        }
    }
    out
}

/// "0-45" or "7" for a single layer.
pub fn span(first: u32, last: u32) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_read_back_in_layer_order() {
        let r = ranges(&[
            "b:4-7".into(),
            "a:0-3".into(),
            "junk".into(),
            "c:9-8".into(),
        ]);
        assert_eq!(
            r.iter()
                .map(|r| (r.node.as_str(), r.first, r.last))
                .collect::<Vec<_>>(),
            [("a", 0, 3), ("b", 4, 7)],
            "sorted, malformed and reversed entries skipped"
        );
        let o = owners(&r, 9);
        assert_eq!(o[0], Some("a"));
        assert_eq!(o[7], Some("b"));
        assert_eq!(o[8], None, "layer 8 has no owner");
        assert_eq!(span(3, 3), "3");
        assert_eq!(span(0, 45), "0-45");
    }
}

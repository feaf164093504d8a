//! A model's placement drawn in layer order: a bar along layers `0..N`, one segment per run
//! of consecutive layers on the same worker, coloured by worker and labelled with it and its
//! layers where the segment is wide enough, and a legend line below naming every range (a
//! range too narrow to get a cell of the bar is still in the legend).

use ratatui::{
    style::{Color, Style},
    text::{Line, Span},
};

use crate::layers;

/// Colours given to workers, in the order the nodes are listed (so a worker keeps its colour
/// across models).
const PALETTE: [Color; 6] = [
    Color::Cyan,
    Color::Magenta,
    Color::Blue,
    Color::Green,
    Color::Yellow,
    Color::LightRed,
];

/// One run of consecutive layers on one node (or on none), and the cells of the bar it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The node holding the layers; `None`: unplaced.
    pub node: Option<String>,
    /// First layer.
    pub first: u32,
    /// Last layer (inclusive).
    pub last: u32,
    /// Cells of the bar (0 when too narrow to show).
    pub cells: usize,
}

/// The runs of `assignments` over layers `0..layer_count`, with the cells of a bar `width`
/// wide each gets: a run from layer `f` to `l` covers cells `round(f*W/N)..round((l+1)*W/N)`,
/// so the cells add up to `width` and stay in layer order.
pub fn segments(assignments: &[String], layer_count: i32, width: usize) -> Vec<Segment> {
    let n = layer_count.max(0) as u32;
    let ranges = layers::ranges(assignments);
    let owners = layers::owners(&ranges, n);
    let cell = |layer: u32| (layer as usize * width + n as usize / 2) / (n as usize).max(1);
    let mut out: Vec<Segment> = Vec::new();
    for (layer, owner) in owners.iter().enumerate() {
        let layer = layer as u32;
        match out.last_mut() {
            Some(s) if s.node.as_deref() == *owner => s.last = layer,
            _ => out.push(Segment {
                node: owner.map(String::from),
                first: layer,
                last: layer,
                cells: 0,
            }),
        }
    }
    for s in &mut out {
        s.cells = cell(s.last + 1) - cell(s.first);
    }
    out
}

/// The colour of `node`: by its place in `nodes` (the order the Nodes tab lists them).
pub fn color(node: &str, nodes: &[String]) -> Color {
    let i = nodes.iter().position(|n| n == node).unwrap_or_else(|| {
        node.bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize)
    });
    PALETTE[i % PALETTE.len()]
}

/// `text` cut or padded to exactly `cells` characters.
fn fit(text: &str, cells: usize) -> String {
    let cut: String = text.chars().take(cells).collect();
    format!("{cut:<cells$}")
}

/// The bar and its legend. `dim`: drawn grey (stale data).
pub fn lines(
    assignments: &[String],
    layer_count: i32,
    width: usize,
    nodes: &[String],
    dim: bool,
) -> (Line<'static>, Line<'static>) {
    let segments = segments(assignments, layer_count, width);
    let mut bar = Vec::new();
    let mut legend = Vec::new();
    for s in &segments {
        let span = layers::span(s.first, s.last);
        let (style, label) = match &s.node {
            None => (Style::default().fg(Color::DarkGray), "·".repeat(s.cells)),
            Some(node) => {
                let full = format!("{node} {span}");
                let label = if full.chars().count() <= s.cells {
                    full
                } else {
                    node.clone()
                };
                let c = if dim {
                    Color::DarkGray
                } else {
                    color(node, nodes)
                };
                (
                    Style::default().bg(c).fg(Color::Black),
                    fit(&label, s.cells),
                )
            }
        };
        if s.cells > 0 {
            bar.push(Span::styled(label, style));
        }
        let who = s.node.as_deref().unwrap_or("unplaced");
        let fg = match &s.node {
            Some(node) if !dim => color(node, nodes),
            _ => Color::DarkGray,
        };
        if !legend.is_empty() {
            legend.push(Span::raw("  "));
        }
        legend.push(Span::styled(
            format!("{span} {who}"),
            Style::default().fg(fg),
        ));
    }
    (Line::from(bar), Line::from(legend))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &Line) -> String {
        line.spans.iter().map(|s| s.content.as_ref()).collect()
    }

    /// The bar follows layer order: a worker holding two separate ranges appears twice, the
    /// cells add up to the width, unplaced layers are dots, and labels fit their segment.
    #[test]
    fn the_bar_follows_layer_order() {
        let s = segments(
            &["a:0-39".into(), "b:40-59".into(), "a:60-79".into()],
            80,
            20,
        );
        let got: Vec<(Option<&str>, u32, u32, usize)> = s
            .iter()
            .map(|s| (s.node.as_deref(), s.first, s.last, s.cells))
            .collect();
        assert_eq!(
            got,
            [
                (Some("a"), 0, 39, 10),
                (Some("b"), 40, 59, 5),
                (Some("a"), 60, 79, 5)
            ]
        );
        let s = segments(&["a:0-9".into()], 20, 10);
        assert_eq!(s[1].node, None, "layers 10-19 unplaced");
        assert_eq!(s.iter().map(|s| s.cells).sum::<usize>(), 10);

        let nodes = vec!["worker-1".to_string(), "worker-2".to_string()];
        let (bar, legend) = lines(
            &["worker-1:0-45".into(), "worker-2:46-79".into()],
            80,
            40,
            &nodes,
            false,
        );
        let bar_text = text(&bar);
        assert_eq!(bar_text.chars().count(), 40, "{bar_text:?}");
        assert!(bar_text.starts_with("worker-1 0-45"), "{bar_text:?}");
        assert!(bar_text.contains("worker-2 46-79"), "{bar_text:?}");
        assert_eq!(text(&legend), "0-45 worker-1  46-79 worker-2");
        assert_ne!(
            bar.spans[0].style.bg, bar.spans[1].style.bg,
            "each worker its own colour"
        );
        let (narrow, _) = lines(&["worker-1:0-79".into()], 80, 5, &nodes, false);
        assert_eq!(text(&narrow), "worke", "cut to the segment");
    }
}

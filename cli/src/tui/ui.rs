//! Drawing the TUI from an [`App`]; fits an 80x24 terminal.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Tabs, Wrap},
    Frame,
};

use super::app::{App, Connection, Tab};

const HELP: &[&str] = &[
    "1 2 3, Tab, arrows   switch tabs",
    ":                    command line (ExecuteCommand),",
    "                     e.g. :status  :drain worker-1",
    "                     :model add m --layers 8 --size 8G",
    "Enter / Esc          run / close the command line",
    "?                    this help",
    "q, Esc, Ctrl-C       quit",
];

fn status_color(status: &str) -> Color {
    match status {
        "healthy" | "placed" | "leader" => Color::Green,
        "unhealthy" | "draining" | "pending" | "candidate" => Color::Yellow,
        "offline" => Color::Red,
        _ => Color::Gray,
    }
}

/// "3s ago" for a Unix-ms time relative to `now_ms`.
fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "-".to_string();
    }
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// A bar of `width` characters showing each node's share of a model's layers, with a legend.
pub fn placement_bar(assignments: &[String], layer_count: i32, width: usize) -> (String, String) {
    let mut nodes: Vec<(String, i32)> = Vec::new();
    for a in assignments {
        let Some((node, range)) = a.rsplit_once(':') else {
            continue;
        };
        let Some((f, l)) = range.split_once('-') else {
            continue;
        };
        let n = l.parse::<i32>().unwrap_or(0) - f.parse::<i32>().unwrap_or(0) + 1;
        match nodes.iter_mut().find(|(id, _)| id == node) {
            Some(e) => e.1 += n,
            None => nodes.push((node.to_string(), n)),
        }
    }
    let mut bar = String::new();
    let mut legend = Vec::new();
    let total = layer_count.max(1) as usize;
    for (i, (node, n)) in nodes.iter().enumerate() {
        let mark = char::from(b'A' + (i % 26) as u8);
        let cells = ((*n as usize * width) + total / 2) / total;
        bar.extend(std::iter::repeat_n(mark, cells.max(1)));
        legend.push(format!("{mark}={node}:{n}"));
    }
    let bar: String = bar.chars().take(width).collect();
    (format!("{bar:<width$}"), legend.join(" "))
}

fn nodes(frame: &mut Frame, app: &App, area: Rect) {
    let header = Row::new(["NODE", "STATUS", "GPUS", "MEM GiB", "LAYERS", "LAST SEEN"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = app.nodes.iter().map(|n| {
        let r = n.resources.clone().unwrap_or_default();
        Row::new(vec![
            Cell::from(n.node_id.clone()),
            Cell::from(n.status.clone()).style(Style::default().fg(status_color(&n.status))),
            Cell::from(r.gpus.len().to_string()),
            Cell::from(format!("{:.0}", r.memory_mb as f64 / 1024.0)),
            Cell::from(format!("{}/{}", r.used_layers, r.max_layers)),
            Cell::from(ago(app.updated_at, n.last_seen)),
        ])
    });
    let widths = [
        Constraint::Min(14),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
    ];
    let title = format!(" Nodes ({}) ", app.nodes.len());
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn models(frame: &mut Frame, app: &App, area: Rect) {
    let bar_width = (area.width as usize).saturating_sub(40).clamp(10, 60);
    let header = Row::new(["MODEL", "LAYERS", "STATUS", "PLACEMENT"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = app.models.iter().map(|m| {
        let (bar, legend) = placement_bar(&m.node_assignments, m.layer_count, bar_width);
        let detail = if m.placement_status == "pending" {
            m.pending_reason.clone()
        } else {
            format!("{bar}\n{legend}")
        };
        Row::new(vec![
            Cell::from(m.id.clone()),
            Cell::from(m.layer_count.to_string()),
            Cell::from(m.placement_status.clone())
                .style(Style::default().fg(status_color(&m.placement_status))),
            Cell::from(detail),
        ])
        .height(2)
    });
    let widths = [
        Constraint::Length(14),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    let title = format!(" Models ({}) ", app.models.len());
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn cluster(frame: &mut Frame, app: &App, area: Rect) {
    let mut lines = Vec::new();
    match &app.replicas {
        Some(r) => {
            let idx = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
            lines.push(Line::from(format!(
                "leader  replica {} ({})   term {}",
                r.leader_id, r.leader_address, r.term
            )));
            lines.push(Line::from(format!(
                "log     commit {}  applied {}  snapshot {}",
                idx(r.commit_index),
                idx(r.applied_index),
                idx(r.snapshot_index)
            )));
            for rep in &r.replicas {
                lines.push(Line::from(vec![
                    Span::raw(format!("  replica {:<3} {:<22} ", rep.id, rep.address)),
                    Span::styled(
                        rep.role.clone(),
                        Style::default().fg(status_color(&rep.role)),
                    ),
                ]));
            }
        }
        None => lines.push(Line::from("replicas: waiting for status ...")),
    }
    if let Some(m) = &app.metrics {
        lines.push(Line::from(""));
        lines.push(Line::from(format!(
            "nodes   {} healthy of {}      gpus {}",
            m.healthy_nodes, m.total_nodes, m.total_gpus
        )));
        lines.push(Line::from(format!(
            "memory  {} GiB available of {} GiB",
            m.available_memory_mb / 1024,
            m.total_memory_mb / 1024
        )));
        lines.push(Line::from(format!(
            "layers  {}/{} allocated ({:.1}%)",
            m.allocated_layers,
            m.total_layers,
            m.cluster_utilization * 100.0
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Cluster ")),
        area,
    );
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let [top, main, out, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [tabs_area, conn_area] =
        Layout::horizontal([Constraint::Length(30), Constraint::Min(10)]).areas(top);
    let tabs = Tabs::new(
        Tab::ALL
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{} {}", i + 1, t.title())),
    )
    .select(Tab::ALL.iter().position(|t| *t == app.tab).unwrap_or(0))
    .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_widget(tabs, tabs_area);
    let conn = match &app.connection {
        Connection::Live(endpoint) => Span::styled(
            format!("live: {endpoint}"),
            Style::default().fg(Color::Green),
        ),
        Connection::Connecting {
            attempt,
            last_error,
        } => Span::styled(
            match last_error {
                Some(e) => format!("reconnecting (try {attempt}): {e}"),
                None => "connecting ...".to_string(),
            },
            Style::default().fg(Color::Yellow),
        ),
    };
    frame.render_widget(Paragraph::new(Line::from(conn).right_aligned()), conn_area);
    match app.tab {
        Tab::Nodes => nodes(frame, app, main),
        Tab::Models => models(frame, app, main),
        Tab::Cluster => cluster(frame, app, main),
    }
    let shown: Vec<Line> = app
        .output
        .iter()
        .rev()
        .take(out.height.saturating_sub(2) as usize)
        .rev()
        .map(|l| Line::from(l.clone()))
        .collect();
    frame.render_widget(
        Paragraph::new(shown)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" Output ")),
        out,
    );
    let hint = match &app.input {
        Some(line) => Line::from(format!(":{line}_")),
        None => Line::from("q quit  ? help  : command  1/2/3 or Tab switch tabs")
            .style(Style::default().fg(Color::DarkGray)),
    };
    frame.render_widget(Paragraph::new(hint), bottom);
    if app.show_help {
        let area = frame.area();
        let w = 56.min(area.width);
        let h = (HELP.len() as u16 + 2).min(area.height);
        let popup = Rect::new((area.width - w) / 2, (area.height - h) / 2, w, h);
        frame.render_widget(Clear, popup);
        frame.render_widget(
            Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
                .block(Block::default().borders(Borders::ALL).title(" Keys ")),
            popup,
        );
    }
}

#[cfg(test)]
mod tests {
    use dllm_proto::pb;
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;

    fn screen(app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        terminal.draw(|f| draw(f, app)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fixture() -> App {
        App {
            connection: Connection::Live("127.0.0.1:8080".into()),
            updated_at: 10_000,
            nodes: vec![pb::NodeInfo {
                node_id: "worker-1".into(),
                status: "healthy".into(),
                last_seen: 7_000,
                resources: Some(pb::ResourceInfo {
                    memory_mb: 65536,
                    gpus: vec![pb::GpuInfo::default(); 2],
                    max_layers: 159,
                    used_layers: 46,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            models: vec![
                pb::ModelInfo {
                    id: "demo-70b".into(),
                    layer_count: 80,
                    node_assignments: vec!["worker-1:0-45".into(), "worker-2:46-79".into()],
                    placement_status: "placed".into(),
                    ..Default::default()
                },
                pb::ModelInfo {
                    id: "huge".into(),
                    layer_count: 100,
                    placement_status: "pending".into(),
                    pending_reason: "needs 100 layers".into(),
                    ..Default::default()
                },
            ],
            ..App::default()
        }
    }

    #[test]
    fn nodes_tab_shows_each_node() {
        let s = screen(&fixture());
        assert!(s.contains("1 Nodes"), "{s}");
        assert!(s.contains("live: 127.0.0.1:8080"), "{s}");
        let row = s
            .lines()
            .find(|l| l.contains("worker-1"))
            .expect("a worker-1 row");
        for want in ["healthy", "64", "46/159", "3s ago"] {
            assert!(row.contains(want), "{want:?} in {row:?}");
        }
        assert!(s.contains("q quit"), "{s}");
    }

    #[test]
    fn models_tab_shows_bars_and_pending_reasons() {
        let mut app = fixture();
        app.tab = Tab::Models;
        let s = screen(&app);
        assert!(s.contains("demo-70b"), "{s}");
        assert!(s.contains("A=worker-1:46 B=worker-2:34"), "{s}");
        assert!(s.contains("AAAA"), "{s}");
        assert!(s.contains("needs 100 layers"), "{s}");
    }

    #[test]
    fn cluster_tab_help_and_reconnecting_state() {
        let mut app = fixture();
        app.tab = Tab::Cluster;
        app.replicas = Some(pb::ReplicaStatusResponse {
            leader_id: 2,
            leader_address: "127.0.0.1:8081".into(),
            term: 7,
            commit_index: Some(42),
            replicas: vec![pb::ReplicaInfo {
                id: 2,
                address: "127.0.0.1:8081".into(),
                role: "leader".into(),
            }],
            ..Default::default()
        });
        app.connection = Connection::Connecting {
            attempt: 3,
            last_error: Some("connection refused".into()),
        };
        let s = screen(&app);
        assert!(s.contains("replica 2 (127.0.0.1:8081)   term 7"), "{s}");
        assert!(s.contains("commit 42"), "{s}");
        assert!(s.contains("reconnecting (try 3)"), "{s}");
        app.show_help = true;
        let s = screen(&app);
        assert!(s.contains("Keys"), "{s}");
        assert!(s.contains("command line"), "{s}");
    }

    #[test]
    fn placement_bar_is_proportional() {
        let (bar, legend) = placement_bar(&["a:0-59".into(), "b:60-79".into()], 80, 20);
        assert_eq!(bar, "AAAAAAAAAAAAAAABBBBB");
        assert_eq!(legend, "A=a:60 B=b:20");
    }
}

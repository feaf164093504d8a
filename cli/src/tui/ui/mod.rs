//! Drawing the TUI from an [`App`]; fits an 80x24 terminal. The tabs are in [`views`], the
//! placement bar in [`placement`]; here the frame around them: tab titles and connection,
//! the stale-data banner, the scrollable output pane, the key hints and help.

mod placement;
mod views;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Tabs},
    Frame,
};

use super::app::{App, Connection, Tab};
use crate::commands::local_time;

const HELP: &[&str] = &[
    "1 2 3, Tab, <- ->    switch tabs",
    ":                    command line (ExecuteCommand),",
    "                     e.g. :status  :drain worker-1",
    "                     :model add m --layers 8 --size 8G",
    "Enter / Esc          run / close the command line",
    "PgUp PgDn, Up Down   scroll the output (Home, End)",
    "j k, J K, g G        scroll the nodes (row, page, ends)",
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

/// The output pane's lines wrapped to `width` characters, so scrolling counts what is drawn.
fn wrap(lines: &[String], width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        if chars.is_empty() {
            out.push(String::new());
        }
        out.extend(chars.chunks(width).map(|c| c.iter().collect::<String>()));
    }
    out
}

/// The output pane: as tall as the answer up to half the screen, scrolled to
/// `app.output_scroll`, with where it is and how to scroll in its title when it does not fit.
fn output(frame: &mut Frame, app: &App, area: Rect) {
    let lines = wrap(&app.output, area.width.saturating_sub(2) as usize);
    let shown = area.height.saturating_sub(2) as usize;
    app.output_view.set((lines.len(), shown));
    let top = app.output_scroll.min(lines.len().saturating_sub(shown));
    let title = if lines.len() > shown {
        format!(
            " Output {}-{} of {} (PgUp/PgDn) ",
            top + 1,
            (top + shown).min(lines.len()),
            lines.len()
        )
    } else {
        " Output ".to_string()
    };
    let visible: Vec<Line> = lines
        .into_iter()
        .skip(top)
        .take(shown)
        .map(Line::from)
        .collect();
    frame.render_widget(
        Paragraph::new(visible).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// Height of the output pane: its lines and borders, at least 4 rows, at most half the rows
/// left by the tab line and the hint line.
fn output_height(app: &App, screen: Rect) -> u16 {
    let lines = wrap(&app.output, screen.width.saturating_sub(2) as usize).len() as u16;
    let most = (screen.height.saturating_sub(2) / 2).max(4);
    (lines + 2).clamp(4, most)
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let [top, main, out, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(output_height(app, frame.area())),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let titles: Vec<String> = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()))
        .collect();
    // Each title is padded by a space on both sides, with a divider between two.
    let tabs_width = titles.iter().map(|t| t.len() + 3).sum::<usize>() - 1;
    let [tabs_area, conn_area] =
        Layout::horizontal([Constraint::Length(tabs_width as u16), Constraint::Min(10)]).areas(top);
    let tabs = Tabs::new(titles)
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
    let main = if app.is_stale() {
        let [banner, rest] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(4)]).areas(main);
        let text = format!(
            " disconnected: data from {}, reconnecting ... ",
            local_time(app.updated_at)
        );
        frame.render_widget(
            Paragraph::new(text).style(Style::default().fg(Color::Black).bg(Color::Yellow)),
            banner,
        );
        rest
    } else {
        main
    };
    match app.tab {
        Tab::Nodes => views::nodes(frame, app, main),
        Tab::Models => views::models(frame, app, main),
        Tab::Cluster => views::cluster(frame, app, main),
    }
    output(frame, app, out);
    let hint = match &app.input {
        Some(line) => Line::from(format!(":{line}_")),
        None => Line::from("q quit  ? help  : command  1/2/3 or Tab switch tabs  PgUp/PgDn output")
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
    use dllm_proto::{pb, view::ClusterView};
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
        let nodes = vec![pb::NodeInfo {
            node_id: "worker-1".into(),
            status: "healthy".into(),
            last_seen: 7_000,
            resources: Some(pb::ResourceInfo {
                memory_mb: 65536,
                gpus: vec![
                    pb::GpuInfo {
                        name: "NVIDIA H100".into(),
                        memory_mb: 81920,
                        ..Default::default()
                    };
                    2
                ],
                max_layers: 159,
                used_layers: 46,
                ..Default::default()
            }),
            ..Default::default()
        }];
        let models = vec![
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
        ];
        App {
            connection: Connection::Live("127.0.0.1:8080".into()),
            updated_at: 10_000,
            view: ClusterView {
                nodes: Some(nodes.into_iter().map(|n| (n.node_id.clone(), n)).collect()),
                models: Some(models.into_iter().map(|m| (m.id.clone(), m)).collect()),
                metrics: None,
            },
            ..App::default()
        }
    }

    /// The cell of the first `text` on the screen.
    fn style_of(app: &App, text: &str) -> Style {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        terminal.draw(|f| draw(f, app)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let (y, line) = screen(app)
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(text))
            .map(|(y, l)| (y, l.to_string()))
            .unwrap_or_else(|| panic!("{text:?} on screen"));
        let x = line[..line.find(text).unwrap()].chars().count();
        buffer[(x as u16, y as u16)].style()
    }

    /// At 80 columns every tab title is whole; a node's row shows its status, GPUs (model and
    /// memory, what placement uses), host RAM, layers and when it was last seen.
    #[test]
    fn nodes_tab_shows_each_node() {
        let s = screen(&fixture());
        assert!(
            s.lines()
                .next()
                .unwrap()
                .contains("1 Nodes │ 2 Models │ 3 Cluster"),
            "{s}"
        );
        assert!(s.contains("live: 127.0.0.1:8080"), "{s}");
        let row = s
            .lines()
            .find(|l| l.contains("worker-1"))
            .expect("a worker-1 row");
        for want in ["healthy", "2x NVIDIA H100 80G", "64", "46/159", "3s ago"] {
            assert!(row.contains(want), "{want:?} in {row:?}");
        }
        assert!(s.contains("q quit"), "{s}");
        assert_eq!(style_of(&fixture(), "healthy").fg, Some(Color::Green));
    }

    /// With 100,000 nodes the table shows the rows that fit and where they are; j, J and G
    /// move through them, and a delta changes just the row it names.
    #[test]
    fn a_large_fleet_pages_through_the_nodes() {
        use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let mut app = fixture();
        let node = |i: usize, status: &str| pb::NodeInfo {
            node_id: format!("w{i:06}"),
            status: status.into(),
            ..Default::default()
        };
        app.on_update(pb::ClusterUpdate {
            update_type: "nodes".into(),
            timestamp: 10_000,
            nodes: (0..100_000).map(|i| node(i, "healthy")).collect(),
            ..Default::default()
        })
        .expect("a whole list");
        let s = screen(&app);
        assert!(s.contains("Nodes 1-"), "{s}");
        assert!(s.contains("of 100000 (j/k, J/K)"), "{s}");
        assert!(s.contains("w000000") && !s.contains("w099999"), "{s}");
        let key = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        app.on_key(key('G'));
        app.on_update(pb::ClusterUpdate {
            update_type: "nodes".into(),
            timestamp: 11_000,
            nodes: vec![node(99_999, "offline")],
            delta: true,
            ..Default::default()
        })
        .expect("a delta");
        let s = screen(&app);
        let last = s
            .lines()
            .find(|l| l.contains("w099999"))
            .expect("the last row");
        assert!(last.contains("offline"), "{last}");
        assert!(s.contains("of 100000"), "{s}");
        app.on_key(key('g'));
        app.on_key(key('j'));
        let s = screen(&app);
        assert!(s.contains("w000001") && !s.contains("w000000"), "{s}");
    }

    /// The placement is drawn in layer order, each worker's range labelled; a pending model
    /// says why.
    #[test]
    fn models_tab_shows_bars_and_pending_reasons() {
        let mut app = fixture();
        app.tab = Tab::Models;
        let s = screen(&app);
        assert!(s.contains("demo-70b"), "{s}");
        let bar = s.lines().find(|l| l.contains("demo-70b")).expect("a row");
        let (w1, w2) = (
            bar.find("worker-1 0-45")
                .expect("worker-1's range labelled"),
            bar.find("worker-2 46-79")
                .expect("worker-2's range labelled"),
        );
        assert!(w1 < w2, "layer order: {bar}");
        assert!(s.contains("0-45 worker-1  46-79 worker-2"), "legend: {s}");
        assert!(s.contains("needs 100 layers"), "{s}");
    }

    /// Once the stream is lost, the data is marked stale: a banner with the time of the data,
    /// the tab titled stale, and no status in its live colour.
    #[test]
    fn stale_data_is_marked() {
        let mut app = fixture();
        app.connection = Connection::Connecting {
            attempt: 2,
            last_error: Some("127.0.0.1:8080: stream ended".into()),
        };
        let s = screen(&app);
        assert!(
            s.contains(&format!("disconnected: data from {}", local_time(10_000))),
            "{s}"
        );
        assert!(s.contains("Nodes (1) (stale)"), "{s}");
        assert_eq!(style_of(&app, "healthy").fg, Some(Color::DarkGray));
        app.tab = Tab::Models;
        assert_eq!(style_of(&app, "placed").fg, Some(Color::DarkGray));
        app.connection = Connection::Connecting {
            attempt: 0,
            last_error: None,
        };
        app.updated_at = 0;
        assert!(
            !screen(&app).contains("disconnected"),
            "no data yet: nothing stale"
        );
    }

    /// A long answer grows the pane to half the screen, starts at its first line (where an
    /// error says what went wrong) and scrolls to its last.
    #[test]
    fn a_long_answer_scrolls() {
        let mut app = fixture();
        app.on_output(
            "modle add x",
            Ok(pb::CommandResponse {
                error: format!(
                    "unknown command \"modle\"; did you mean \"model\"?\n{}",
                    (1..=20)
                        .map(|i| format!("help line {i}\n"))
                        .collect::<String>()
                ),
                exit_code: 2,
                ..Default::default()
            }),
        );
        let s = screen(&app);
        assert!(s.contains("did you mean"), "the start is shown: {s}");
        assert!(s.contains("Output 1-9 of 23 (PgUp/PgDn)"), "{s}");
        assert!(!s.contains("(exit 2)"), "{s}");
        app.on_key(ratatui::crossterm::event::KeyEvent::from(
            ratatui::crossterm::event::KeyCode::End,
        ));
        let s = screen(&app);
        assert!(s.contains("help line 20") && s.contains("(exit 2)"), "{s}");
        assert!(s.contains("Output 15-23 of 23"), "{s}");
        assert!(s.contains("Nodes (1)"), "the tab still shows: {s}");
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
}

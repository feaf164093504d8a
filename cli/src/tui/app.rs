//! The TUI's state and how keys and cluster updates change it; no drawing and no I/O, so it
//! is tested directly.

use std::cell::Cell;

use dllm_proto::{
    pb,
    view::{ClusterView, DeltaWithoutBase},
};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// The tabs, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Worker nodes.
    Nodes,
    /// Models and placement.
    Models,
    /// Replicas, leader, metrics.
    Cluster,
}

impl Tab {
    /// Every tab in order.
    pub const ALL: [Tab; 3] = [Tab::Nodes, Tab::Models, Tab::Cluster];

    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Nodes => "Nodes",
            Tab::Models => "Models",
            Tab::Cluster => "Cluster",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// How the TUI is connected to the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Connection {
    /// Trying endpoints; what the last attempt said.
    Connecting {
        /// Attempts so far.
        attempt: u32,
        /// Why the last one failed, if it did.
        last_error: Option<String>,
    },
    /// Receiving updates from this endpoint.
    Live(String),
}

/// Something the app wants done outside itself.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Run this ExecuteCommand line.
    Execute(String),
}

/// Everything the TUI shows.
#[derive(Debug)]
pub struct App {
    /// The selected tab.
    pub tab: Tab,
    /// Nodes, models and metrics as the stream (whole lists, then deltas) described them.
    pub view: ClusterView,
    /// The first row of the Nodes table shown.
    pub node_scroll: usize,
    /// The Nodes table as last drawn: rows shown (the drawing sets it, for paging).
    pub node_rows: Cell<usize>,
    /// Replica status as of the last poll.
    pub replicas: Option<pb::ReplicaStatusResponse>,
    /// Connection state.
    pub connection: Connection,
    /// The command line being typed, after `:`.
    pub input: Option<String>,
    /// The last command and its output.
    pub output: Vec<String>,
    /// The first line of the output pane shown (0: the start of the answer).
    pub output_scroll: usize,
    /// The output pane as last drawn: lines in all (after wrapping) and lines shown; the
    /// drawing sets it, so scrolling stops at the end and pages are a pane high.
    pub output_view: Cell<(usize, usize)>,
    /// Whether the help overlay is open.
    pub show_help: bool,
    /// When the last update arrived (its timestamp, Unix ms).
    pub updated_at: i64,
    /// Set when the user asked to quit.
    pub quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self {
            tab: Tab::Nodes,
            view: ClusterView::default(),
            node_scroll: 0,
            node_rows: Cell::new(0),
            replicas: None,
            connection: Connection::Connecting {
                attempt: 0,
                last_error: None,
            },
            input: None,
            output: Vec::new(),
            output_scroll: 0,
            output_view: Cell::new((0, 0)),
            show_help: false,
            updated_at: 0,
            quit: false,
        }
    }
}

impl App {
    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        if self.scroll(key.code) {
            return None;
        }
        if let Some(line) = self.input.as_mut() {
            match key.code {
                KeyCode::Esc => self.input = None,
                KeyCode::Enter => {
                    let line = self.input.take().unwrap_or_default();
                    if !line.trim().is_empty() {
                        self.output = vec![format!(":{line}"), "running ...".into()];
                        self.output_scroll = 0;
                        return Some(Action::Execute(line));
                    }
                }
                KeyCode::Backspace => {
                    line.pop();
                }
                KeyCode::Char(c) => line.push(c),
                _ => {}
            }
            return None;
        }
        if self.show_help {
            self.show_help = false;
            return None;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('?') => self.show_help = true,
            KeyCode::Char(':') => self.input = Some(String::new()),
            KeyCode::Char('1') => self.tab = Tab::Nodes,
            KeyCode::Char('2') => self.tab = Tab::Models,
            KeyCode::Char('3') => self.tab = Tab::Cluster,
            KeyCode::Tab | KeyCode::Right => self.tab = Tab::ALL[(self.tab.index() + 1) % 3],
            KeyCode::BackTab | KeyCode::Left => self.tab = Tab::ALL[(self.tab.index() + 2) % 3],
            KeyCode::Char(c @ ('j' | 'k' | 'J' | 'K' | 'g' | 'G')) => self.scroll_nodes(c),
            _ => {}
        }
        None
    }

    /// Scrolls the output pane for Up, Down, PgUp, PgDn, Home and End; whether the key was
    /// one of those.
    fn scroll(&mut self, code: KeyCode) -> bool {
        let (total, shown) = self.output_view.get();
        let page = shown.max(1);
        let end = total.saturating_sub(shown);
        let at = self.output_scroll.min(end);
        self.output_scroll = match code {
            KeyCode::Up => at.saturating_sub(1),
            KeyCode::Down => (at + 1).min(end),
            KeyCode::PageUp => at.saturating_sub(page),
            KeyCode::PageDown => (at + page).min(end),
            KeyCode::Home => 0,
            KeyCode::End => end,
            _ => return false,
        };
        true
    }

    /// Moves the Nodes table: `j`/`k` a row, `J`/`K` a page, `g`/`G` the top or the end.
    fn scroll_nodes(&mut self, key: char) {
        let total = self.node_count();
        let page = self.node_rows.get().max(1);
        let end = total.saturating_sub(page);
        let at = self.node_scroll.min(end);
        self.node_scroll = match key {
            'j' => (at + 1).min(end),
            'k' => at.saturating_sub(1),
            'J' => (at + page).min(end),
            'K' => at.saturating_sub(page),
            'g' => 0,
            _ => end,
        };
    }

    /// How many nodes are held.
    pub fn node_count(&self) -> usize {
        self.view.nodes.as_ref().map_or(0, |n| n.len())
    }

    /// The models held, by id.
    pub fn models(&self) -> Vec<&pb::ModelInfo> {
        self.view.model_list()
    }

    /// Whether what is shown is old: the stream broke after data came.
    pub fn is_stale(&self) -> bool {
        !matches!(self.connection, Connection::Live(_)) && self.updated_at > 0
    }

    /// Takes in one cluster update.
    ///
    /// # Errors
    /// A delta before its whole list; nothing is changed (the stream should be followed
    /// again).
    pub fn on_update(&mut self, update: pb::ClusterUpdate) -> Result<(), DeltaWithoutBase> {
        let timestamp = update.timestamp;
        self.view.apply(update)?;
        self.updated_at = timestamp;
        Ok(())
    }

    /// Shows the answer to a command.
    pub fn on_output(&mut self, line: &str, result: Result<pb::CommandResponse, String>) {
        let mut out = vec![format!(":{line}")];
        match result {
            Ok(r) => {
                out.extend(r.output.lines().map(String::from));
                out.extend(r.error.lines().map(String::from));
                if r.exit_code != 0 {
                    out.push(format!("(exit {})", r.exit_code));
                }
            }
            Err(e) => out.push(format!("failed: {e}")),
        }
        self.output = out;
        self.output_scroll = 0;
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEvent;

    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_switch_tabs_open_help_and_quit() {
        let mut app = App::default();
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.tab, Tab::Models);
        app.on_key(key(KeyCode::Char('3')));
        assert_eq!(app.tab, Tab::Cluster);
        app.on_key(key(KeyCode::Left));
        assert_eq!(app.tab, Tab::Models);
        app.on_key(key(KeyCode::Char('?')));
        assert!(app.show_help);
        app.on_key(key(KeyCode::Char('x')));
        assert!(!app.show_help, "any key closes help");
        app.on_key(key(KeyCode::Char('q')));
        assert!(app.quit);
    }

    #[test]
    fn the_command_line_runs_commands() {
        let mut app = App::default();
        app.on_key(key(KeyCode::Char(':')));
        for c in "pingx".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Backspace));
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::Execute("ping".into()))
        );
        assert!(app.input.is_none());
        app.on_key(key(KeyCode::Char('q')));
        assert!(app.quit, "q quits once the command line is closed");
    }

    /// An answer is shown from its start; the scroll keys move through it a line or a pane
    /// at a time and stop at either end.
    #[test]
    fn the_output_scrolls_and_stops_at_the_ends() {
        let mut app = App::default();
        let answer = pb::CommandResponse {
            output: (1..=20).map(|i| format!("line {i}\n")).collect(),
            ..Default::default()
        };
        app.output_scroll = 7;
        app.on_output("help", Ok(answer));
        assert_eq!(app.output_scroll, 0, "a new answer starts at its top");
        app.output_view.set((21, 5));
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.output_scroll, 5);
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.output_scroll, 4);
        app.on_key(key(KeyCode::End));
        assert_eq!(app.output_scroll, 16, "the last pane");
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.output_scroll, 16, "stops at the end");
        app.on_key(key(KeyCode::Home));
        app.on_key(key(KeyCode::PageUp));
        assert_eq!(app.output_scroll, 0, "stops at the start");
        assert!(
            !app.quit && app.tab == Tab::Nodes,
            "scrolling is all they do"
        );
    }
}

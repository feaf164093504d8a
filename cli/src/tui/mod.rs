//! `dllm tui`: a live terminal UI driven by `StreamUpdates` (whole lists, then deltas). It reconnects to the next
//! endpoint when the stream breaks and says so on screen instead of freezing; `q` quits and
//! the terminal is restored even on error or panic.

mod app;
mod ui;

use std::time::Duration;

use app::{Action, App, Connection};
use dllm_proto::pb;
use futures::StreamExt;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio::sync::mpsc;

use crate::client::Cluster;

/// What reaches the UI loop.
enum AppEvent {
    Key(ratatui::crossterm::event::KeyEvent),
    Update(pb::ClusterUpdate),
    Replicas(pb::ReplicaStatusResponse),
    Connection(Connection),
    Output(String, Result<pb::CommandResponse, String>),
    Resize,
}

/// Keeps a `StreamUpdates` stream open against the endpoints in turn, forever.
async fn follow(cluster: Cluster, tx: mpsc::Sender<AppEvent>) {
    let mut attempt = 0u32;
    let mut next = 0usize;
    loop {
        let endpoint = cluster.endpoints[next % cluster.endpoints.len()].clone();
        next += 1;
        attempt += 1;
        let error = match cluster.connect(&endpoint).await {
            Err(e) => e,
            Ok(mut c) => {
                let request = pb::UpdateStreamRequest {
                    requester_id: "dllm-tui".into(),
                    interval_seconds: 2,
                    update_types: vec![],
                    deltas: true,
                };
                match c.tui.stream_updates(request).await {
                    Err(s) => s.message().to_string(),
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        let mut live = false;
                        // The types this stream has sent a whole list of.
                        let mut whole: Vec<String> = Vec::new();
                        loop {
                            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await
                            {
                                Ok(Some(Ok(update))) => {
                                    let kind = &update.update_type;
                                    if !update.delta {
                                        if !whole.contains(kind) {
                                            whole.push(kind.clone());
                                        }
                                    } else if !whole.contains(kind) {
                                        break format!("a {kind} delta came before the list");
                                    }
                                    if !live {
                                        live = true;
                                        attempt = 0;
                                        next -= 1; // stay on this endpoint next time
                                        let _ = tx
                                            .send(AppEvent::Connection(Connection::Live(
                                                endpoint.clone(),
                                            )))
                                            .await;
                                    }
                                    if tx.send(AppEvent::Update(update)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(Some(Err(s))) => break s.message().to_string(),
                                Ok(None) => break "stream ended".to_string(),
                                Err(_) => break "no update for 10 s".to_string(),
                            }
                        }
                    }
                }
            }
        };
        let state = Connection::Connecting {
            attempt,
            last_error: Some(format!("{endpoint}: {error}")),
        };
        if tx.send(AppEvent::Connection(state)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls replica status every 2 s for the Cluster tab.
async fn poll_replicas(cluster: Cluster, tx: mpsc::Sender<AppEvent>) {
    loop {
        let status = cluster
            .first_answer(|mut c| async move {
                Ok(c.admin
                    .get_replica_status(pb::ReplicaStatusRequest {})
                    .await?
                    .into_inner())
            })
            .await;
        if let Ok(s) = status {
            if tx.send(AppEvent::Replicas(s)).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads keys on a blocking thread.
fn read_keys(tx: mpsc::Sender<AppEvent>) {
    loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    if tx.blocking_send(AppEvent::Key(k)).is_err() {
                        return;
                    }
                }
                Ok(Event::Resize(..)) => {
                    if tx.blocking_send(AppEvent::Resize).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) => {
                if tx.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Runs the TUI until `q`.
///
/// # Errors
/// When the terminal cannot be drawn to.
pub async fn run(cluster: Cluster) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(256);
    let follower = tokio::spawn(follow(cluster.clone(), tx.clone()));
    let poller = tokio::spawn(poll_replicas(cluster.clone(), tx.clone()));
    let keys_tx = tx.clone();
    std::thread::spawn(move || read_keys(keys_tx));

    // ratatui::init installs a panic hook that restores the terminal.
    let mut terminal = ratatui::init();
    let mut app = App::default();
    let result = loop {
        if let Err(e) = terminal.draw(|f| ui::draw(f, &app)) {
            break Err(anyhow::Error::from(e));
        }
        let Some(event) = rx.recv().await else {
            break Ok(());
        };
        match event {
            AppEvent::Key(k) => {
                if let Some(Action::Execute(line)) = app.on_key(k) {
                    let (cluster, tx) = (cluster.clone(), tx.clone());
                    tokio::spawn(async move {
                        let mut words = line.split_whitespace().map(String::from);
                        let command = words.next().unwrap_or_default();
                        let args: Vec<String> = words.collect();
                        let result = crate::commands::exec(&cluster, &command, &args)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = tx.send(AppEvent::Output(line, result)).await;
                    });
                }
            }
            AppEvent::Update(u) => {
                // The follower checks each stream's order, so this cannot fail; if it did,
                // nothing would change and the screen would say why.
                if let Err(e) = app.on_update(u) {
                    app.connection = Connection::Connecting {
                        attempt: 0,
                        last_error: Some(e.to_string()),
                    };
                }
            }
            AppEvent::Replicas(r) => app.replicas = Some(r),
            AppEvent::Connection(c) => app.connection = c,
            AppEvent::Output(line, result) => app.on_output(&line, result),
            AppEvent::Resize => {}
        }
        if app.quit {
            break Ok(());
        }
    };
    ratatui::restore();
    follower.abort();
    poller.abort();
    result
}

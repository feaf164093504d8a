//! The three tabs: nodes (status, GPUs with their memory, host RAM, layers), models (the
//! placement bar in layer order) and the cluster (replicas, leader, metrics). Stale data is
//! drawn grey, never in the colours of a live status.

use ratatui::{
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
    Frame,
};

use super::{ago, placement, status_color};
use crate::{commands::gpu_summary, layers, tui::app::App};

/// The style of a status word: its colour while live, grey when stale.
fn status_style(app: &App, status: &str) -> Style {
    if app.is_stale() {
        Style::default().fg(Color::DarkGray)
    } else {
        Style::default().fg(status_color(status))
    }
}

/// The style of a whole row: grey when stale.
fn row_style(app: &App) -> Style {
    if app.is_stale() {
        Style::default().fg(Color::DarkGray)
    } else {
        Style::default()
    }
}

fn block(app: &App, title: String) -> Block<'static> {
    let title = if app.is_stale() {
        format!("{title}(stale) ")
    } else {
        title
    };
    Block::default().borders(Borders::ALL).title(title)
}

/// The Nodes tab: the rows that fit, from `app.node_scroll` (only those are built, so a
/// fleet of 100,000 nodes draws as fast as ten).
pub fn nodes(frame: &mut Frame, app: &App, area: Rect) {
    let header = Row::new(["NODE", "STATUS", "GPUS", "RAM GiB", "LAYERS", "SEEN"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    // Borders and the header take three rows.
    let shown = area.height.saturating_sub(3) as usize;
    app.node_rows.set(shown);
    let total = app.node_count();
    let top = app.node_scroll.min(total.saturating_sub(shown));
    let visible = app
        .view
        .nodes
        .iter()
        .flat_map(|n| n.values())
        .skip(top)
        .take(shown);
    let rows = visible.map(|n| {
        let r = n.resources.clone().unwrap_or_default();
        Row::new(vec![
            Cell::from(n.node_id.clone()),
            Cell::from(n.status.clone()).style(status_style(app, &n.status)),
            Cell::from(gpu_summary(&r)),
            Cell::from(format!("{:.0}", r.memory_mb as f64 / 1024.0)),
            Cell::from(format!("{}/{}", r.used_layers, r.max_layers)),
            Cell::from(ago(app.updated_at, n.last_seen)),
        ])
        .style(row_style(app))
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let title = if total > shown {
        format!(
            " Nodes {}-{} of {} (j/k, J/K) ",
            top + 1,
            (top + shown).min(total),
            total
        )
    } else {
        format!(" Nodes ({total}) ")
    };
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block(app, title)),
        area,
    );
}

/// The Models tab: each placed model's layers as a bar in layer order with a legend; a pending
/// model's reason.
pub fn models(frame: &mut Frame, app: &App, area: Rect) {
    let bar_width = (area.width as usize).saturating_sub(33).clamp(10, 80);
    let models = app.models();
    // Workers are coloured by their place among the workers holding layers, in id order.
    let node_ids: Vec<String> = models
        .iter()
        .flat_map(|m| layers::ranges(&m.node_assignments))
        .map(|r| r.node)
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect();
    let header = Row::new(["MODEL", "LAYERS", "STATUS", "PLACEMENT (layer 0 ->)"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = models.iter().map(|m| {
        let detail = if m.placement_status == "pending" {
            Text::from(m.pending_reason.clone())
        } else {
            let (bar, legend) = placement::lines(
                &m.node_assignments,
                m.layer_count,
                bar_width,
                &node_ids,
                app.is_stale(),
            );
            Text::from(vec![bar, legend])
        };
        Row::new(vec![
            Cell::from(m.id.clone()),
            Cell::from(m.layer_count.to_string()),
            Cell::from(m.placement_status.clone()).style(status_style(app, &m.placement_status)),
            Cell::from(detail),
        ])
        .style(row_style(app))
        .height(2)
    });
    let widths = [
        Constraint::Length(14),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    let title = format!(" Models ({}) ", models.len());
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block(app, title)),
        area,
    );
}

/// The Cluster tab.
pub fn cluster(frame: &mut Frame, app: &App, area: Rect) {
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
                    Span::styled(rep.role.clone(), status_style(app, &rep.role)),
                ]));
            }
        }
        None => lines.push(Line::from("replicas: waiting for status ...")),
    }
    if let Some(m) = &app.view.metrics {
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
        Paragraph::new(lines)
            .style(row_style(app))
            .block(block(app, " Cluster ".to_string())),
        area,
    );
}

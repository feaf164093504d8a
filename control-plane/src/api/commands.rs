//! ExecuteCommand's language: parsing `command` + `args` + `options` into a [`Cmd`] (never
//! through a shell), and running it against the replica.
//!
//! Exit codes: 0 success; 2 usage error (usage text in `error`); 1 refused operation (the
//! reason in `error`). The RPC itself is OK for all of these.

use std::{collections::HashMap, fmt::Write as _};

use dllm_auth::{policy, Role};
use dllm_util::clock::now_ms;

use crate::{
    convert,
    error::ApiError,
    forward::{MembershipChange, Proposal},
    replica::Replica,
    state::{Command, ModelSpec, NodeStatus, Outcome, Placement},
};

/// What ExecuteCommand answers for `help`.
pub const HELP: &str = "\
commands:
  status                            cluster summary: leader, nodes, models, utilization
  ping                              which replica answered and who leads
  nodes                             worker nodes
  models                            models, their placement or why they are pending
  model add <id> --layers N --size BYTES [--name S] [--version S] [--path S]
                                    register a model (flags may also come as options;
                                    BYTES may end in K, M, G or T, binary units)
  model remove <id>                 remove a model and free its layers
  drain <node>                      move a node's layers off it; it takes no new ones
  undrain <node>                    let a drained node take layers again
  leave <node>                      mark a node as left
  rebalance [model]                 re-split one model (or all) by free memory
  members                           control-plane replicas and the leader
  member add <id> <host:port>       add a control-plane replica (learner, then voter)
  member remove <id>                remove a control-plane replica
  token revoke <jti>                refuse a client token (its id) on every replica
  help                              this text
";

/// A parsed command.
#[derive(Debug, PartialEq)]
pub enum Cmd {
    /// `help`.
    Help,
    /// `status`.
    Status,
    /// `ping`.
    Ping,
    /// `nodes`.
    Nodes,
    /// `models`.
    Models,
    /// `model add`.
    ModelAdd(ModelSpec),
    /// `model remove`.
    ModelRemove(String),
    /// `drain` / `undrain`.
    Drain(String, bool),
    /// `leave`.
    Leave(String),
    /// `rebalance [model]`.
    Rebalance(Option<String>),
    /// `members`.
    Members,
    /// `member add` / `member remove`.
    Member(MembershipChange),
    /// `token revoke <jti>`.
    RevokeToken(String),
}

impl Cmd {
    /// The roles that may run this command when authentication is on. Written per variant,
    /// so a new command cannot reach the handler without a decision here.
    pub fn roles(&self) -> &'static [Role] {
        match self {
            Cmd::Help | Cmd::Status | Cmd::Ping | Cmd::Nodes | Cmd::Models | Cmd::Members => {
                policy::READERS
            }
            Cmd::ModelAdd(_)
            | Cmd::ModelRemove(_)
            | Cmd::Drain(..)
            | Cmd::Leave(_)
            | Cmd::Rebalance(_) => policy::OPERATORS,
            Cmd::Member(_) | Cmd::RevokeToken(_) => policy::ADMINS,
        }
    }
}

/// A usage error: what is wrong and the usage of the command.
#[derive(Debug, PartialEq)]
pub struct Usage(pub String);

fn usage(what: &str, line: &str) -> Usage {
    Usage(format!("{what}\nusage: {line}"))
}

/// Parses a size like `80G`, `512M` or `1073741824`.
fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim();
    let (num, shift) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 10),
        (i, 'M' | 'm') => (&t[..i], 20),
        (i, 'G' | 'g') => (&t[..i], 30),
        (i, 'T' | 't') => (&t[..i], 40),
        _ => (t, 0),
    };
    num.trim().parse::<i64>().ok()?.checked_mul(1i64 << shift)
}

/// Splits `args` into positionals and `--flag value` pairs; options count as flags too.
fn flags(
    args: &[String],
    options: &HashMap<String, String>,
    line: &str,
) -> Result<(Vec<String>, HashMap<String, String>), Usage> {
    let mut positional = Vec::new();
    let mut named: HashMap<String, String> = options
        .iter()
        .map(|(k, v)| (k.trim_start_matches('-').to_string(), v.clone()))
        .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => match it.next() {
                    Some(v) => (name.to_string(), v.clone()),
                    None => return Err(usage(&format!("--{name} needs a value"), line)),
                },
            };
            named.insert(name, value);
        } else {
            positional.push(a.clone());
        }
    }
    Ok((positional, named))
}

const MODEL_ADD: &str =
    "model add <id> --layers N --size BYTES [--name S] [--version S] [--path S]";

fn model_add(args: &[String], options: &HashMap<String, String>) -> Result<Cmd, Usage> {
    let (pos, mut named) = flags(args, options, MODEL_ADD)?;
    let [id] = pos.as_slice() else {
        return Err(usage("model add takes one model id", MODEL_ADD));
    };
    let layers = named
        .remove("layers")
        .ok_or_else(|| usage("--layers is required", MODEL_ADD))?;
    let layer_count = layers
        .parse::<i32>()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .ok_or_else(|| {
            usage(
                &format!("--layers {layers:?} must be 1 to 1000000"),
                MODEL_ADD,
            )
        })?;
    let size = named
        .remove("size")
        .ok_or_else(|| usage("--size is required", MODEL_ADD))?;
    let size_bytes = parse_size(&size).filter(|s| *s > 0).ok_or_else(|| {
        usage(
            &format!("--size {size:?} must be a positive size such as 80G"),
            MODEL_ADD,
        )
    })?;
    let mut text = |key: &str, default: &str| -> Result<String, Usage> {
        let v = named.remove(key).unwrap_or_else(|| default.to_string());
        if v.len() > convert::MAX_TEXT_LEN {
            return Err(usage(
                &format!("--{key} is longer than {} bytes", convert::MAX_TEXT_LEN),
                MODEL_ADD,
            ));
        }
        Ok(v)
    };
    let spec = ModelSpec {
        name: text("name", id)?,
        version: text("version", "")?,
        file_path: text("path", "")?,
        id: id.clone(),
        layer_count,
        size_bytes,
    };
    if let Some(unknown) = named.keys().next() {
        return Err(usage(&format!("unknown flag --{unknown}"), MODEL_ADD));
    }
    Ok(Cmd::ModelAdd(spec))
}

/// Parses one command.
///
/// # Errors
/// [`Usage`] for an unknown command or malformed arguments.
pub fn parse(
    command: &str,
    args: &[String],
    options: &HashMap<String, String>,
) -> Result<Cmd, Usage> {
    let one = |line: &str| -> Result<String, Usage> {
        match args {
            [x] => Ok(x.clone()),
            _ => Err(usage("wrong number of arguments", line)),
        }
    };
    let none = |cmd: Cmd, line: &str| -> Result<Cmd, Usage> {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(usage(&format!("{line} takes no arguments"), line))
        }
    };
    match command {
        "help" => Ok(Cmd::Help),
        "status" => none(Cmd::Status, "status"),
        "ping" => none(Cmd::Ping, "ping"),
        "nodes" => none(Cmd::Nodes, "nodes"),
        "models" => none(Cmd::Models, "models"),
        "members" => none(Cmd::Members, "members"),
        "drain" => Ok(Cmd::Drain(one("drain <node>")?, true)),
        "undrain" => Ok(Cmd::Drain(one("undrain <node>")?, false)),
        "leave" => Ok(Cmd::Leave(one("leave <node>")?)),
        "rebalance" => match args {
            [] => Ok(Cmd::Rebalance(None)),
            [m] => Ok(Cmd::Rebalance(Some(m.clone()))),
            _ => Err(usage("wrong number of arguments", "rebalance [model]")),
        },
        "model" => match args.split_first() {
            Some((sub, rest)) if sub == "add" => model_add(rest, options),
            Some((sub, rest)) if sub == "remove" => match rest {
                [id] => Ok(Cmd::ModelRemove(id.clone())),
                _ => Err(usage("wrong number of arguments", "model remove <id>")),
            },
            _ => Err(usage(
                "model needs add or remove",
                &format!("{MODEL_ADD}\n       model remove <id>"),
            )),
        },
        "member" => match args {
            [sub, id, addr] if sub == "add" => {
                let id = id.parse::<u64>().ok().filter(|i| *i > 0).ok_or_else(|| {
                    usage(
                        &format!("{id:?} is not a replica id"),
                        "member add <id> <host:port>",
                    )
                })?;
                Ok(Cmd::Member(MembershipChange::Add {
                    id,
                    addr: addr.clone(),
                }))
            }
            [sub, id] if sub == "remove" => {
                let id = id.parse::<u64>().ok().filter(|i| *i > 0).ok_or_else(|| {
                    usage(&format!("{id:?} is not a replica id"), "member remove <id>")
                })?;
                Ok(Cmd::Member(MembershipChange::Remove { id }))
            }
            _ => Err(usage(
                "member needs add or remove",
                "member add <id> <host:port>\n       member remove <id>",
            )),
        },
        "token" => match args {
            [sub, jti] if sub == "revoke" => {
                if jti.is_empty() || jti.len() > convert::MAX_TEXT_LEN {
                    return Err(usage(
                        "jti: a token id, as `dllm token create` printed it",
                        "token revoke <jti>",
                    ));
                }
                Ok(Cmd::RevokeToken(jti.clone()))
            }
            _ => Err(usage(
                "token needs revoke and the token's id",
                "token revoke <jti>",
            )),
        },
        other => Err(Usage(match did_you_mean(other) {
            Some(near) => format!("unknown command {other:?}; did you mean {near:?}?\n{HELP}"),
            None => format!("unknown command {other:?}\n{HELP}"),
        })),
    }
}

/// Every command's first word, for suggestions.
const COMMANDS: &[&str] = &[
    "help",
    "status",
    "ping",
    "nodes",
    "models",
    "members",
    "drain",
    "undrain",
    "leave",
    "rebalance",
    "model",
    "member",
    "token",
];

/// The command nearest to `typed`, if one is within two edits (and nearer than half its
/// length): "modle" gives "model", "replicas" nothing.
fn did_you_mean(typed: &str) -> Option<&'static str> {
    let typed = typed.to_ascii_lowercase();
    COMMANDS
        .iter()
        .map(|c| (edit_distance(&typed, c), *c))
        .filter(|(d, c)| *d <= 2 && *d * 2 < c.len().max(typed.len()))
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance, with an adjacent swap counting as one edit (typing's most common
/// slip).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Runs a parsed command. Errors are refusals (exit code 1).
///
/// # Errors
/// What the cluster said no with.
pub async fn run(replica: &Replica, cmd: Cmd) -> Result<String, ApiError> {
    match cmd {
        Cmd::Help => Ok(HELP.to_string()),
        Cmd::Ping => {
            let s = replica.status();
            Ok(format!(
                "pong from replica {} (leader {})\n",
                s.answered_by, s.leader_id
            ))
        }
        Cmd::Status => {
            let (cluster_id, by_status, placed, pending, metrics) = replica
                .read(|s| {
                    let mut by_status: Vec<(NodeStatus, usize)> =
                        NodeStatus::ALL.iter().map(|st| (*st, 0)).collect();
                    for n in s.nodes.values() {
                        if let Some(e) = by_status.iter_mut().find(|(st, _)| *st == n.status) {
                            e.1 += 1;
                        }
                    }
                    let placed = s
                        .models
                        .values()
                        .filter(|m| matches!(m.placement, Placement::Placed(_)))
                        .count();
                    (
                        s.cluster_id.clone().unwrap_or_default(),
                        by_status,
                        placed,
                        s.models.len() - placed,
                        convert::cluster_metrics(s, &Default::default()),
                    )
                })
                .await?;
            let r = replica.status();
            let nodes: Vec<String> = by_status
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(st, n)| format!("{n} {}", st.as_str()))
                .collect();
            Ok(format!(
                "cluster   {cluster_id}\nleader    replica {} ({}) term {}\nreplicas  {}\nnodes     {}\nmodels    {placed} placed, {pending} pending\nlayers    {}/{} allocated ({:.1}%)\ngpus      {}\n",
                r.leader_id,
                r.leader_address,
                r.term,
                r.replicas.len(),
                if nodes.is_empty() { "none".to_string() } else { nodes.join(", ") },
                metrics.allocated_layers,
                metrics.total_layers,
                metrics.cluster_utilization * 100.0,
                metrics.total_gpus,
            ))
        }
        Cmd::Nodes => {
            let nodes = replica
                .read(|s| s.nodes_by_id().into_iter().cloned().collect::<Vec<_>>())
                .await?;
            let mut rows = vec![["NODE", "STATUS", "ADDRESS", "GPUS", "MEMORY_MB", "LAYERS"]
                .map(String::from)
                .to_vec()];
            rows.extend(nodes.iter().map(|n| {
                vec![
                    n.node_id.clone(),
                    n.status.as_str().to_string(),
                    format!("{}:{}", n.address, n.port),
                    n.resources.gpus.len().to_string(),
                    n.resources.memory_mb.to_string(),
                    format!("{}/{}", n.used_layers, n.resources.max_layers),
                ]
            }));
            Ok(table(rows))
        }
        Cmd::Models => {
            let models = replica
                .read(|s| s.models.values().cloned().collect::<Vec<_>>())
                .await?;
            let mut rows = vec![["MODEL", "LAYERS", "SIZE_MB", "STATUS", "HOPS", "PLACEMENT"]
                .map(String::from)
                .to_vec()];
            rows.extend(models.iter().map(|m| {
                let (status, hops, detail) = match &m.placement {
                    Placement::Placed(ranges) => (
                        "placed",
                        crate::placement::hops(ranges).to_string(),
                        convert::pipeline(ranges).join(" "),
                    ),
                    Placement::Pending(reason) => ("pending", "-".to_string(), reason.clone()),
                };
                vec![
                    m.spec.id.clone(),
                    m.spec.layer_count.to_string(),
                    (m.spec.size_bytes >> 20).to_string(),
                    status.to_string(),
                    hops,
                    detail,
                ]
            }));
            Ok(table(rows))
        }
        Cmd::ModelAdd(spec) => {
            convert::node_id("args[1]", &spec.id)?;
            let id = spec.id.clone();
            replica.propose(Proposal::AddModel(spec)).await?;
            let placement = replica
                .read(|s| s.models.get(&id).map(|m| m.placement.clone()))
                .await?;
            Ok(match placement {
                Some(Placement::Pending(reason)) => {
                    format!("model {id} added, pending: {reason}\n")
                }
                _ => format!("model {id} added and placed\n"),
            })
        }
        Cmd::ModelRemove(id) => {
            replica
                .write(Command::RemoveModel { id: id.clone() })
                .await?;
            Ok(format!("model {id} removed\n"))
        }
        Cmd::Drain(node_id, drain) => {
            replica
                .write(Command::SetDrain {
                    node_id: node_id.clone(),
                    drain,
                })
                .await?;
            Ok(if drain {
                format!("node {node_id} is draining; its layers move to other nodes\n")
            } else {
                format!("node {node_id} takes layers again (run rebalance to use it now)\n")
            })
        }
        Cmd::Leave(node_id) => {
            replica
                .write(Command::LeaveNode {
                    node_id: node_id.clone(),
                    now_ms: now_ms(),
                })
                .await?;
            Ok(format!("node {node_id} left\n"))
        }
        Cmd::Rebalance(model) => match replica.propose(Proposal::Rebalance(model)).await? {
            Outcome::PlacementsChanged { applied: 0, skipped } if skipped.is_empty() => {
                Ok("rebalanced: nothing to move, every placed model is at the fewest hops its room allows\n".to_string())
            }
            Outcome::PlacementsChanged { applied, skipped } if skipped.is_empty() => {
                Ok(format!("rebalanced: {applied} placement change(s)\n"))
            }
            Outcome::PlacementsChanged { applied, skipped } => Ok(format!(
                "rebalanced: {applied} placement change(s); skipped: {}\n",
                skipped.join("; ")
            )),
            other => Err(ApiError::Internal(format!("rebalance answered {other:?}"))),
        },
        Cmd::Members => {
            replica.linearize().await?;
            let s = replica.status();
            let index = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
            let mut out = format!(
                "leader {} ({}) term {} commit {} applied {}\n",
                s.leader_id,
                s.leader_address,
                s.term,
                index(s.commit_index),
                index(s.applied_index)
            );
            let mut rows = vec![["ID", "ADDRESS", "ROLE"].map(String::from).to_vec()];
            rows.extend(
                s.replicas
                    .iter()
                    .map(|r| vec![r.id.to_string(), r.address.clone(), r.role.clone()]),
            );
            out.push_str(&table(rows));
            Ok(out)
        }
        Cmd::RevokeToken(jti) => {
            let outcome = replica
                .write(Command::RevokeToken {
                    jti: jti.clone(),
                    now_ms: dllm_util::clock::now_ms(),
                })
                .await?;
            Ok(match outcome {
                Outcome::TokenRevoked { already: true } => {
                    format!("token {jti} was already revoked\n")
                }
                _ => format!(
                    "token {jti} revoked (committed: each replica refuses it once it has applied the entry)\n"
                ),
            })
        }
        Cmd::Member(change) => {
            if let MembershipChange::Add { id, addr } = &change {
                crate::api::admin::add_change(*id, addr)?;
            }
            let what = match &change {
                MembershipChange::Add { id, addr } => {
                    format!("replica {id} at {addr} is a voter\n")
                }
                MembershipChange::Remove { id } => format!("replica {id} removed\n"),
            };
            replica.change_membership(change).await?;
            Ok(what)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(command: &str, args: &[&str]) -> Result<Cmd, Usage> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(command, &args, &HashMap::new())
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(p("status", &[]), Ok(Cmd::Status));
        assert_eq!(p("drain", &["w1"]), Ok(Cmd::Drain("w1".into(), true)));
        assert_eq!(p("rebalance", &[]), Ok(Cmd::Rebalance(None)));
        assert_eq!(
            p("member", &["remove", "3"]),
            Ok(Cmd::Member(MembershipChange::Remove { id: 3 }))
        );
        match p(
            "model",
            &[
                "add",
                "llama",
                "--layers",
                "80",
                "--size=80G",
                "--name",
                "Llama 3",
            ],
        ) {
            Ok(Cmd::ModelAdd(spec)) => {
                assert_eq!((spec.layer_count, spec.size_bytes), (80, 80 << 30));
                assert_eq!(spec.name, "Llama 3");
            }
            other => panic!("{other:?}"),
        }
        let options = HashMap::from([
            ("layers".to_string(), "4".to_string()),
            ("size".to_string(), "1024".to_string()),
        ]);
        assert!(
            matches!(parse("model", &["add".into(), "m".into()], &options), Ok(Cmd::ModelAdd(s)) if s.layer_count == 4)
        );
    }

    #[test]
    fn usage_errors_carry_the_usage() {
        for (command, args) in [
            ("status", &["x"][..]),
            ("drain", &[][..]),
            ("model", &["add", "m", "--layers", "0", "--size", "1"][..]),
            ("model", &["add", "m", "--size", "1"][..]),
            (
                "model",
                &["add", "m", "--layers", "2", "--size", "lots"][..],
            ),
            (
                "model",
                &["add", "m", "--layers", "2", "--size", "1", "--color", "red"][..],
            ),
            ("model", &["frobnicate"][..]),
            ("member", &["add", "zero", "h:1"][..]),
        ] {
            let err = p(command, args).expect_err(command);
            assert!(err.0.contains("usage:"), "{command} {args:?}: {err:?}");
        }
        let reboot = p("reboot", &[]).expect_err("unknown").0;
        assert!(reboot.contains("unknown command"), "{reboot}");
        assert!(!reboot.contains("did you mean"), "{reboot}");
        for (typo, meant) in [
            ("modle", "model"),
            ("nodse", "nodes"),
            ("membres", "members"),
            ("rebalanse", "rebalance"),
            ("Status", "status"),
            ("drian", "drain"),
        ] {
            let e = p(typo, &[]).expect_err(typo).0;
            assert!(
                e.contains(&format!("did you mean {meant:?}?")),
                "{typo}: {e}"
            );
        }
        let mut in_help: Vec<&str> = HELP
            .lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        in_help.sort_unstable();
        in_help.dedup();
        let mut suggested = COMMANDS.to_vec();
        suggested.sort_unstable();
        assert_eq!(suggested, in_help, "every command in HELP is suggested");
    }

    /// The roles of every parsed command agree with the first-word table the server checks
    /// before parsing (and the security tests use): neither can open what the other closes.
    #[test]
    fn each_command_needs_the_roles_the_table_names() {
        for (command, args) in [
            ("help", &[][..]),
            ("status", &[][..]),
            ("ping", &[][..]),
            ("nodes", &[][..]),
            ("models", &[][..]),
            ("members", &[][..]),
            ("model", &["add", "m", "--layers", "2", "--size", "1G"][..]),
            ("model", &["remove", "m"][..]),
            ("drain", &["w"][..]),
            ("undrain", &["w"][..]),
            ("leave", &["w"][..]),
            ("rebalance", &[][..]),
            ("member", &["add", "4", "h:1"][..]),
            ("member", &["remove", "4"][..]),
            ("token", &["revoke", "j"][..]),
        ] {
            let cmd = p(command, args).unwrap_or_else(|e| panic!("{command}: {e:?}"));
            assert_eq!(
                cmd.roles(),
                policy::command_roles(command),
                "{command} {args:?}"
            );
        }
    }
}

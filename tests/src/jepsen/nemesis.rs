//! The nemesis: the [`Nemesis`] kinds and their parsing, the seeded fault schedule, the
//! process and network faults (kill, pause, partition, loss), and `heal_all`, which undoes
//! every fault still in place. Membership and worker faults are in `churn.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Result;
use nix::sys::signal::Signal;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::Serialize;

use super::{
    net::{self, Filter},
    run::{Run, SLOTS},
};

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a replica (leader, follower or any), restart it later.
    Kill,
    /// SIGSTOP a replica (often the leader), SIGCONT it later.
    Pause,
    /// Isolate the leader, random halves, a majorities ring, or a one-way cut; heal.
    Partition,
    /// Drop a share of the packets between replicas (nftables numgen); heal.
    Loss,
    /// Remove a replica and add a fresh one (new id, empty disk) in its place.
    Membership,
    /// Kill and restart workers; drain and undrain them.
    Workers,
}

impl Nemesis {
    /// Every nemesis.
    pub const ALL: [Nemesis; 6] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Loss,
        Nemesis::Membership,
        Nemesis::Workers,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Loss => "loss",
            Nemesis::Membership => "membership",
            Nemesis::Workers => "workers",
        }
    }
}

impl FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Nemesis::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown nemesis {s:?}; known: {}, all, none",
                    Nemesis::ALL.map(Nemesis::name).join(", ")
                )
            })
    }
}

/// Parses "kill,pause", "all" or "none".
///
/// # Errors
/// For an unknown name.
pub fn parse_nemeses(list: &str) -> Result<BTreeSet<Nemesis>, String> {
    match list.trim() {
        "all" => Ok(Nemesis::ALL.into_iter().collect()),
        "none" | "" => Ok(BTreeSet::new()),
        list => list.split(',').map(|s| s.trim().parse()).collect(),
    }
}

/// Fault injection on the network of this run.
pub(super) struct NetHandle;

impl NetHandle {
    fn set_filter(&self, slot: usize, filter: &Filter) -> Result<()> {
        net::set_filter(SLOTS, slot, filter)
    }
    fn heal(&self) -> Result<()> {
        net::heal(SLOTS)
    }
}

impl Run {
    /// Injects faults from the seeded schedule until the deadline, undoing each.
    pub(super) async fn nemesis(&self, deadline: Instant) -> Result<()> {
        let enabled: Vec<Nemesis> = self.config.nemeses.iter().copied().collect();
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        while Instant::now() < deadline && !enabled.is_empty() {
            let quiet = Duration::from_millis(rng.gen_range(1000..3000));
            tokio::time::sleep(quiet.min(deadline.saturating_duration_since(Instant::now()))).await;
            if Instant::now() >= deadline {
                break;
            }
            let hold = Duration::from_millis(rng.gen_range(2000..5000));
            let hold = hold.min(deadline.saturating_duration_since(Instant::now()));
            let nemesis = *enabled.choose(&mut rng).expect("non-empty");
            match nemesis {
                Nemesis::Kill => self.kill(&mut rng, hold).await,
                Nemesis::Pause => self.pause(&mut rng, hold).await,
                Nemesis::Partition => self.partition(&mut rng, hold).await?,
                Nemesis::Loss => {
                    let percent = rng.gen_range(20..50);
                    for slot in 1..=SLOTS {
                        self.net.set_filter(
                            slot,
                            &Filter {
                                loss_percent: percent,
                                ..Filter::default()
                            },
                        )?;
                    }
                    self.history.nemesis(
                        "loss",
                        format!("{percent}% of packets between replicas dropped"),
                    );
                    tokio::time::sleep(hold).await;
                    self.net.heal()?;
                    self.history.nemesis("heal", "network healed");
                }
                Nemesis::Membership => self.membership(&mut rng).await,
                Nemesis::Workers => self.worker_churn(&mut rng, hold).await,
            }
        }
        Ok(())
    }

    pub(super) async fn pick_target(&self, rng: &mut StdRng) -> (usize, &'static str) {
        let leader = self.leader_slot().await;
        let kind = *["leader", "follower", "random"]
            .choose(rng)
            .expect("non-empty");
        let slot = match (kind, leader) {
            ("leader", Some(l)) => l,
            ("follower", Some(l)) => {
                let others: Vec<usize> = (1..=SLOTS).filter(|s| *s != l).collect();
                *others.choose(rng).expect("followers")
            }
            _ => rng.gen_range(1..=SLOTS),
        };
        (
            slot,
            if kind != "random" && leader.is_none() {
                "random"
            } else {
                kind
            },
        )
    }

    async fn kill(&self, rng: &mut StdRng, hold: Duration) {
        let (slot, kind) = self.pick_target(rng).await;
        {
            let mut procs = self.procs.lock().await;
            let r = procs.replicas.get_mut(&slot).expect("slot");
            if let Some(mut p) = r.process.take() {
                p.kill();
            }
            self.history.nemesis(
                "kill",
                format!("SIGKILL replica {} in slot {slot} ({kind})", r.id),
            );
        }
        tokio::time::sleep(hold).await;
        let mut procs = self.procs.lock().await;
        let r = procs.replicas.get_mut(&slot).expect("slot");
        self.spawn_replica(slot, r);
        self.history.nemesis(
            "restore",
            format!("restarted replica {} in slot {slot}", r.id),
        );
    }

    async fn pause(&self, rng: &mut StdRng, hold: Duration) {
        let (slot, kind) = if rng.gen_bool(0.6) {
            match self.leader_slot().await {
                Some(l) => (l, "leader"),
                None => (rng.gen_range(1..=SLOTS), "random"),
            }
        } else {
            self.pick_target(rng).await
        };
        {
            let mut procs = self.procs.lock().await;
            let r = procs.replicas.get_mut(&slot).expect("slot");
            if let Some(p) = &r.process {
                p.signal(Signal::SIGSTOP);
                r.paused = true;
            }
            self.history.nemesis(
                "pause",
                format!("SIGSTOP replica {} in slot {slot} ({kind})", r.id),
            );
        }
        tokio::time::sleep(hold).await;
        let mut procs = self.procs.lock().await;
        let r = procs.replicas.get_mut(&slot).expect("slot");
        if let (Some(p), true) = (&r.process, r.paused) {
            p.signal(Signal::SIGCONT);
            r.paused = false;
        }
        self.history.nemesis(
            "restore",
            format!("SIGCONT replica {} in slot {slot}", r.id),
        );
    }

    async fn partition(&self, rng: &mut StdRng, hold: Duration) -> Result<()> {
        let mut filters: BTreeMap<usize, Filter> =
            (1..=SLOTS).map(|s| (s, Filter::default())).collect();
        let mut cut = |from: usize, to: usize| {
            // `to` stops hearing `from`.
            filters.get_mut(&to).expect("slot").drop_from.insert(from);
        };
        let kind = *["isolate-leader", "halves", "ring", "one-way"]
            .choose(rng)
            .expect("kinds");
        let detail = match kind {
            "isolate-leader" => {
                let leader = self
                    .leader_slot()
                    .await
                    .unwrap_or_else(|| rng.gen_range(1..=SLOTS));
                for other in (1..=SLOTS).filter(|s| *s != leader) {
                    cut(leader, other);
                    cut(other, leader);
                }
                format!("isolate the leader (slot {leader}) from the others")
            }
            "halves" => {
                let mut slots: Vec<usize> = (1..=SLOTS).collect();
                slots.shuffle(rng);
                let (a, b) = slots.split_at(SLOTS / 2);
                for x in a {
                    for y in b {
                        cut(*x, *y);
                        cut(*y, *x);
                    }
                }
                format!("halves {a:?} | {b:?}")
            }
            "ring" => {
                // Each replica hears a majority (itself and the next ones), none the same.
                let mut ring: Vec<usize> = (1..=SLOTS).collect();
                ring.shuffle(rng);
                let hears = SLOTS / 2; // others each one hears
                for (i, me) in ring.iter().enumerate() {
                    for (j, other) in ring.iter().enumerate() {
                        let distance = (j + SLOTS - i) % SLOTS;
                        if distance > hears {
                            cut(*other, *me);
                        }
                    }
                }
                format!("majorities ring {ring:?}: each hears the next {hears}")
            }
            _ => {
                let mut slots: Vec<usize> = (1..=SLOTS).collect();
                slots.shuffle(rng);
                let (a, b) = (slots[0], slots[1]);
                cut(a, b);
                format!("one-way: slot {a} hears slot {b}, slot {b} does not hear slot {a}")
            }
        };
        for (slot, f) in &filters {
            self.net.set_filter(*slot, f)?;
        }
        self.history
            .nemesis("partition", format!("{kind}: {detail}"));
        tokio::time::sleep(hold).await;
        self.net.heal()?;
        self.history.nemesis("heal", "network healed");
        Ok(())
    }

    /// Undoes every fault still in place.
    pub(super) async fn heal_all(&self) -> Result<()> {
        self.net.heal()?;
        let drained: Vec<usize> = {
            let mut procs = self.procs.lock().await;
            let slots: Vec<usize> = procs.replicas.keys().copied().collect();
            for slot in slots {
                let needs_start = {
                    let r = procs.replicas.get_mut(&slot).expect("slot");
                    if let (Some(p), true) = (&r.process, r.paused) {
                        p.signal(Signal::SIGCONT);
                        r.paused = false;
                    }
                    r.process.as_mut().is_none_or(|p| !p.is_running())
                };
                if needs_start {
                    let r = procs.replicas.get_mut(&slot).expect("slot");
                    self.spawn_replica(slot, r);
                }
            }
            for w in &mut procs.workers {
                if w.process.as_mut().is_none_or(|p| !p.is_running()) {
                    self.spawn_worker(w);
                }
            }
            procs
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.drained)
                .map(|(i, _)| i)
                .collect()
        };
        self.history
            .nemesis("heal", "network healed, every process running");
        self.ensure_members().await;
        for i in drained {
            self.undrain(i).await;
        }
        Ok(())
    }
}

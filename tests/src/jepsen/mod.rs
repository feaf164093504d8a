//! Jepsen-style fault testing of dllm: real processes in network namespaces, a nemesis that
//! kills, pauses, partitions and reconfigures them, clients whose operations go into a
//! history, and checkers over that history (linearizability per key with a WGL search, no
//! lost acknowledged writes, one leader per term, placement invariants, liveness after the
//! heal). The `dllm-jepsen` binary drives it; `tests/JEPSEN.md` explains how to read a run.

pub mod checks;
pub mod history;
pub mod net;
pub mod run;
pub mod wgl;

// The parts of a run, by concern; their public items are re-exported from `run`.
mod churn;
mod clients;
mod nemesis;
mod procs;
mod sampler;
mod summary;

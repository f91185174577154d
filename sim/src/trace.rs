//! The trace: everything that happened in a run, in simulated-time order.
//!
//! A trace is what a learner reads (as a timeline), what `--json` prints and what the determinism
//! test hashes: the same scenario and seed must give the same bytes.

use serde::{Deserialize, Serialize};

/// The `tracing` target of the simulator's trace lines.
pub const TRACE_TARGET: &str = "quorumlab_sim::trace";

/// The span a simulated run's trace events are in: its scenario, seed and, where a scenario runs
/// once per setting, the setting (`async`, `w:majority`).
pub fn sim_span(scenario: &str, seed: u64, setting: &str) -> tracing::Span {
    tracing::debug_span!(target: TRACE_TARGET, "sim", scenario, seed, setting)
}

/// Emits one trace line as a `tracing` event at debug level, stamped with simulated time
/// (`sim_us`), so one subscriber can watch a simulated run (`RUST_LOG=quorumlab_sim::trace=debug`).
/// The trace itself, the learner's timeline, is unchanged; with no subscriber this is one check.
pub fn emit(at_us: u64, node: &str, what: impl std::fmt::Display) {
    tracing::debug!(target: TRACE_TARGET, sim_us = at_us, node, "{what}");
}

use crate::node::Role;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Simulated time since the start, in microseconds.
    pub at_us: u64,
    /// Where it happened: `n1`.. for nodes, `client3` for clients, `lab` for injected faults.
    pub node: String,
    /// What happened.
    #[serde(flatten)]
    pub what: EventKind,
}

/// The kinds of event a trace records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    /// A node changed role or term.
    Role {
        /// The new role.
        role: Role,
        /// The node's current term.
        term: u64,
    },
    /// A node granted its (pre-)vote.
    VoteGranted {
        /// The candidate.
        to: String,
        /// The term voted in.
        term: u64,
        /// Whether it was a pre-vote.
        pre_vote: bool,
    },
    /// The lab injected a fault.
    Fault {
        /// What was done, with symbolic names resolved (e.g. `isolate leader (n2)`).
        label: String,
    },
    /// A node's process stopped (crash) or started again.
    Process {
        /// Whether the process now runs.
        up: bool,
    },
    /// A client operation completed.
    Op {
        /// Index of the operation in the run's history.
        op: usize,
        /// `ok`, `fail` or `unknown`.
        outcome: String,
        /// Short description, e.g. `put k3=17`.
        what: String,
    },
    /// A safety property broke.
    Violation {
        /// Which property and how.
        what: String,
    },
}

impl Event {
    /// A line of the learner's timeline, e.g. `  5.123s  n2  became leader in term 3`.
    pub fn timeline_line(&self) -> String {
        let text = match &self.what {
            EventKind::Role {
                role: Role::Leader,
                term,
            } => format!("became LEADER in term {term}"),
            EventKind::Role { role, term } => format!("became {role} (term {term})"),
            EventKind::VoteGranted {
                to,
                term,
                pre_vote: true,
            } => {
                format!("granted pre-vote to {to} for term {term}")
            }
            EventKind::VoteGranted { to, term, .. } => {
                format!("granted vote to {to} in term {term}")
            }
            EventKind::Fault { label } => format!("FAULT: {label}"),
            EventKind::Process { up: true } => "process started".to_string(),
            EventKind::Process { up: false } => "process killed".to_string(),
            EventKind::Op { what, .. } => what.clone(),
            EventKind::Violation { what } => format!("INVARIANT VIOLATED: {what}"),
        };
        format!("{:>9.3}s  {:<8} {text}", self.at_us as f64 / 1e6, self.node)
    }
}

//! The trace: everything that happened in a run, in simulated-time order.
//!
//! A trace is what a learner reads (as a timeline), what `--json` prints and what the determinism
//! test hashes: the same scenario and seed must give the same bytes.

use serde::{Deserialize, Serialize};

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

/// Builds the report's picture of a run: role spans per node, fault bands and messages.
pub fn timeline(out: &crate::run::RunOutput) -> quorumlab_experiment::report::Timeline {
    use quorumlab_experiment::report::{FaultSpan, MessageArrow, RoleSpan, Timeline};

    let nodes = out.scenario.topology.nodes;
    let end_us = out.scenario.duration_ms * 1000;
    let mut roles = Vec::new();
    let mut current: Vec<(u64, Role, u64)> = vec![(0, Role::Follower, 0); nodes];
    let node_index = |name: &str| {
        name.strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| n - 1)
    };
    let mut faults: Vec<FaultSpan> = Vec::new();
    for e in &out.trace {
        match &e.what {
            EventKind::Role { role, term } => {
                let Some(i) = node_index(&e.node) else {
                    continue;
                };
                let (from, old_role, old_term) = current[i];
                if e.at_us > from {
                    roles.push(RoleSpan {
                        node: i,
                        from_us: from,
                        to_us: e.at_us,
                        role: old_role.to_string(),
                        term: old_term,
                    });
                }
                current[i] = (e.at_us, *role, *term);
            }
            EventKind::Fault { label } => {
                let is_repair = label.starts_with("heal") || label.starts_with("restart");
                if is_repair {
                    for f in faults.iter_mut().filter(|f| f.to_us == end_us) {
                        f.to_us = e.at_us;
                    }
                } else {
                    faults.push(FaultSpan {
                        from_us: e.at_us,
                        to_us: end_us,
                        label: label.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    for (i, (from, role, term)) in current.into_iter().enumerate() {
        roles.push(RoleSpan {
            node: i,
            from_us: from,
            to_us: end_us,
            role: role.to_string(),
            term,
        });
    }
    // Draw the election itself: from just before the fault to just after the next leader.
    let fault_us = out.summary.fault_at_ms.map_or(0, |ms| ms * 1000);
    let window_end_us = out
        .summary
        .election_ms
        .map_or(fault_us + 2_500_000, |ms| fault_us + ms * 1000 + 200_000);
    let messages = out
        .messages
        .iter()
        .filter(|m| m.send_us + 200_000 >= fault_us && m.send_us <= window_end_us)
        .map(|m| MessageArrow {
            from: m.from as usize - 1,
            to: m.to as usize - 1,
            send_us: m.send_us,
            recv_us: m.recv_us,
            label: format!(
                "{} t{}",
                m.kind.trim_start_matches("Msg").replace("Request", ""),
                m.term
            ),
        })
        .collect();
    let s = &out.summary;
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    Timeline {
        title: format!("{} — seed {}", out.scenario.name, out.seed),
        description: out.scenario.description.clone(),
        nodes: (1..=nodes).map(|i| format!("n{i}")).collect(),
        duration_us: end_us,
        roles,
        faults,
        messages,
        summary: vec![
            ("fault injected at".into(), ms(s.fault_at_ms)),
            ("fault to new leader".into(), ms(s.election_ms)),
            (
                "longest stretch with no write acknowledged".into(),
                format!("{} ms", s.write_unavailable_ms),
            ),
            (
                "operations ok / failed / unknown".into(),
                format!("{} / {} / {}", s.ops.ok, s.ops.fail, s.ops.info),
            ),
            ("leaders elected".into(), s.leaders_elected.to_string()),
            ("linearizability".into(), s.verdict.headline()),
            (
                "invariants".into(),
                if s.invariant_violations.is_empty() {
                    "all held".into()
                } else {
                    s.invariant_violations.join("; ")
                },
            ),
        ],
    }
}

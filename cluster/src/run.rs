//! What every real run shares, whichever system it drives: the faults it fired, why it failed,
//! which faults a real lab can carry out ([`RealLab`], checked before anything starts), and how a
//! fault's steps are carried out through the node agents ([`carry_out`]).

use quorumlab_experiment::fault::{Disruption, Fault, FaultExecutor};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_proto::agent::Action;
use serde::{Deserialize, Serialize};

use crate::lab::{Lab, LabError};

/// A fault as it was fired, with names resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiredFault {
    /// When, in milliseconds since the run started.
    pub at_ms: u64,
    /// What, e.g. `isolate leader (n2)`.
    pub label: String,
}

/// Why a real run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lab could not be brought up or driven.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The scenario asks for something a real cluster cannot do here.
    #[error("scenario {scenario}: {reason}")]
    Unsupported {
        /// Scenario name.
        scenario: String,
        /// What cannot be done.
        reason: String,
    },
}

/// A real lab as a fault runner: agents cut links with nftables and kill and start processes
/// with real signals; delay, loss and duplication would need `tc netem`, which this kernel
/// lacks, so they are refused before anything starts.
pub struct RealLab;

impl FaultExecutor for RealLab {
    fn runner(&self) -> &'static str {
        "the real lab"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::DuplicateRequests { .. } => Err(
                "its clients speak gRPC over TCP, which never delivers a request twice".into(),
            ),
            Fault::Delay { .. } | Fault::Loss { .. } | Fault::Duplicate { .. } => Err(
                "it needs tc netem, which this kernel lacks; the real driver does partitions, crashes and heals"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Checks, before anything starts, that every fault of the scenario can be done for real.
pub fn check_supported(scenario: &Scenario) -> Result<(), RunError> {
    RealLab
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(|reason| RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason,
        })
}

/// Carries out a fault's steps through the agents: links are cut and healed with nftables, and
/// `service` (the database process of each host) is killed or started.
pub async fn carry_out(lab: &Lab, steps: &[Disruption], service: &str) -> Result<(), RunError> {
    for step in steps {
        match *step {
            Disruption::Cut(a, b) => {
                lab.links(a, &[b], true, false).await?;
                lab.links(b, &[a], true, false).await?;
            }
            // Dropped on the receiver's input: what `b` sends still reaches `a`. (TCP
            // connections between them stall all the same: their acknowledgements are lost.)
            Disruption::CutOneway(a, b) => lab.links(b, &[a], true, true).await?,
            Disruption::Kill(id) => lab.signal(id, service, Action::Kill).await?,
            Disruption::Start(id) => lab.signal(id, service, Action::Start).await?,
            Disruption::HealAll => lab.heal_all().await?,
            Disruption::Delay { .. }
            | Disruption::Loss(_)
            | Disruption::Duplicate(_)
            | Disruption::DuplicateRequests(_) => {
                return Err(RunError::Unsupported {
                    scenario: String::new(),
                    reason: "delay, loss and duplication need tc netem, which this kernel lacks"
                        .into(),
                })
            }
        }
    }
    Ok(())
}

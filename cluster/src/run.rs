//! What every real run shares, whichever system it drives: the faults it fired, why it failed,
//! which faults a real lab can carry out ([`RealLab`], checked before anything starts), and how a
//! fault's steps are carried out through the node agents ([`carry_out`]).

use std::collections::BTreeMap;

use quorumlab_experiment::fault::{Disruption, Fault, FaultExecutor};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_proto::agent::{Action, CapabilitiesRequest, ShapeRequest};
use serde::{Deserialize, Serialize};

use crate::agent::links;
use crate::lab::{agent_error, Lab, LabError};

/// A fault as it was fired, with names resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiredFault {
    /// When, in milliseconds since the run started.
    pub at_ms: u64,
    /// What, e.g. `isolate leader (n2)`.
    pub label: String,
}

/// The faults the agents applied between two readings of their own metrics
/// ([`Lab::agent_faults`]), by kind; `None` when either reading is missing.
pub fn agent_faults_between(
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
) -> Option<BTreeMap<String, u64>> {
    let (before, after) = (before?, after?);
    Some(
        after
            .into_iter()
            .map(|(kind, n)| {
                let earlier = before.get(&kind).copied().unwrap_or(0);
                (kind, n.saturating_sub(earlier))
            })
            .filter(|&(_, n)| n > 0)
            .collect(),
    )
}

/// Why a real run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lab could not be brought up or driven.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// A cluster named on the command line could not be used: a malformed or unreachable URI, a
    /// replica set that is not the scenario's (passwords never shown).
    #[error("{0}")]
    Target(String),
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
/// with real signals; delay, loss and duplication need the hosts' kernels to have `tc netem`,
/// and bandwidth limits `tc tbf`. What they lack is refused before anything starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealLab {
    /// Every host's kernel has the netem qdisc.
    pub netem: bool,
    /// Every host's kernel has the tbf qdisc.
    pub tbf: bool,
}

impl RealLab {
    /// What this machine's kernel can do (namespace hosts share it).
    pub fn of_this_machine() -> RealLab {
        RealLab {
            netem: links::has_qdisc("netem"),
            tbf: links::has_qdisc("tbf"),
        }
    }

    /// What every host of `lab` can do, as its agent reports.
    pub async fn of_hosts(lab: &Lab) -> Result<RealLab, LabError> {
        let mut all = RealLab {
            netem: true,
            tbf: true,
        };
        for host in lab.nodes() {
            let caps = lab
                .agent(host)
                .await?
                .capabilities(CapabilitiesRequest {})
                .await
                .map_err(|e| agent_error(host, e))?
                .into_inner();
            all.netem &= caps.netem;
            all.tbf &= caps.tbf;
        }
        Ok(all)
    }

    /// Checks, before anything starts, that every fault of `scenario` can be done here.
    pub fn check(&self, scenario: &Scenario) -> Result<(), RunError> {
        self.check_faults(&scenario.faults, scenario.chaos.as_ref())
            .map_err(|reason| RunError::Unsupported {
                scenario: scenario.name.clone(),
                reason,
            })
    }
}

impl FaultExecutor for RealLab {
    fn runner(&self) -> &'static str {
        "the real lab"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::DuplicateRequests { .. } => Err(
                "its clients speak gRPC over TCP, which never delivers a request twice".into(),
            ),
            Fault::Delay { .. } | Fault::Loss { .. } | Fault::Duplicate { .. } if !self.netem => Err(
                "it needs tc netem, which the hosts' kernel lacks; partitions, crashes, bandwidth limits and heals run"
                    .into(),
            ),
            Fault::Bandwidth { .. } if !self.tbf => {
                Err("it needs tc tbf, which the hosts' kernel lacks".into())
            }
            Fault::StepDown { .. } => Err(
                "step-down is MongoDB's replSetStepDown, sent by the MongoDB driver, not by the node agents"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Checks, before anything starts, that every fault of the scenario can be done on namespace
/// hosts (this machine's kernel).
pub fn check_supported(scenario: &Scenario) -> Result<(), RunError> {
    RealLab::of_this_machine().check(scenario)
}

/// Carries out a fault's steps through the agents: links are cut and healed with nftables, and
/// `service` (the database process of each host) is killed or started.
pub async fn carry_out(lab: &Lab, steps: &[Disruption], service: &str) -> Result<(), RunError> {
    use tracing::Instrument;
    for &step in steps {
        // What is logged while the step is carried out is in the fault's span. A failure is
        // not logged here: it ends the run and is reported once, by the command.
        let span = tracing::info_span!("fault", fault = ?step, target = service);
        let one = async {
            tracing::info!("fault step");
            carry_out_one(lab, step, service).await
        };
        one.instrument(span).await?;
    }
    Ok(())
}

/// Carries out one step of a fault.
async fn carry_out_one(lab: &Lab, step: Disruption, service: &str) -> Result<(), RunError> {
    match step {
        Disruption::Cut(a, b) => {
            lab.links(a, &[b], true, false).await?;
            lab.links(b, &[a], true, false).await?;
        }
        // Dropped on the receiver's input: what `b` sends still reaches `a`. (TCP
        // connections between them stall all the same: their acknowledgements are lost.)
        Disruption::CutOneway(a, b) => lab.links(b, &[a], true, true).await?,
        Disruption::Kill(id) => lab.signal(id, service, Action::Kill).await?,
        Disruption::Start(id) => lab.signal(id, service, Action::Start).await?,
        Disruption::HealAll => {
            lab.heal_all().await?;
            lab.shape_all(ShapeRequest {
                clear: true,
                ..Default::default()
            })
            .await?;
        }
        Disruption::Delay { ms_max } => {
            let delay = ShapeRequest {
                delay_ms_max: Some(ms_max),
                ..Default::default()
            };
            lab.shape_all(delay).await?;
        }
        Disruption::Loss(rate) => {
            let loss = ShapeRequest {
                loss_rate: Some(rate),
                ..Default::default()
            };
            lab.shape_all(loss).await?;
        }
        Disruption::Duplicate(rate) => {
            let duplicate = ShapeRequest {
                duplicate_rate: Some(rate),
                ..Default::default()
            };
            lab.shape_all(duplicate).await?;
        }
        Disruption::Bandwidth(kbit) => {
            let limit = ShapeRequest {
                rate_kbit_per_s: Some(kbit),
                ..Default::default()
            };
            lab.shape_all(limit).await?;
        }
        Disruption::DuplicateRequests(_) | Disruption::StepDown { .. } => {
            unreachable!("refused before the run by RealLab::supports")
        }
    }
    Ok(())
}

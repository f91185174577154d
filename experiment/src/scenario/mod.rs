//! Scenarios: what to run, as data.
//!
//! A scenario file (TOML, in `scenarios/`) names the system under test, its topology, the client
//! workload, a schedule of faults and how long to run. The simulator and the real driver read the
//! same file, so a prediction and a measurement always answer the same question. The built-in
//! scenarios are compiled into the binary; any other `.toml` path works too, so a user can write a
//! new scenario without touching Rust.
//!
//! Faults name nodes symbolically (`leader`, `follower`, `rest`, `n3`): the runner resolves them at
//! the moment the fault fires, because which node leads is only known then.

mod locate;
pub(crate) mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fault::{Chaos, FaultStep};
use crate::mongodb::MongoSettings;
use crate::postgres::PostgresSettings;
use crate::sharded::ShardedSettings;
use crate::system::{SettingsTables, System, SystemName};

/// Scenario files shipped with quorumlab, by name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "etcd-leader-kill",
        include_str!("../../../scenarios/etcd-leader-kill.toml"),
    ),
    (
        "etcd-leader-isolate",
        include_str!("../../../scenarios/etcd-leader-isolate.toml"),
    ),
    (
        "etcd-minority-partition",
        include_str!("../../../scenarios/etcd-minority-partition.toml"),
    ),
    (
        "etcd-bridge-partition",
        include_str!("../../../scenarios/etcd-bridge-partition.toml"),
    ),
    (
        "etcd-leader-oneway",
        include_str!("../../../scenarios/etcd-leader-oneway.toml"),
    ),
    (
        "etcd-chaos",
        include_str!("../../../scenarios/etcd-chaos.toml"),
    ),
    ("pg-lag", include_str!("../../../scenarios/pg-lag.toml")),
    (
        "pg-failover",
        include_str!("../../../scenarios/pg-failover.toml"),
    ),
    (
        "pg-isolate-primary",
        include_str!("../../../scenarios/pg-isolate-primary.toml"),
    ),
    (
        "mongo-primary-kill",
        include_str!("../../../scenarios/mongo-primary-kill.toml"),
    ),
    (
        "mongo-isolate-primary",
        include_str!("../../../scenarios/mongo-isolate-primary.toml"),
    ),
    (
        "mongo-stepdown",
        include_str!("../../../scenarios/mongo-stepdown.toml"),
    ),
    (
        "mongo-lag",
        include_str!("../../../scenarios/mongo-lag.toml"),
    ),
    (
        "shard-add-shard",
        include_str!("../../../scenarios/shard-add-shard.toml"),
    ),
    (
        "shard-donor-crash",
        include_str!("../../../scenarios/shard-donor-crash.toml"),
    ),
    (
        "shard-stale-router",
        include_str!("../../../scenarios/shard-stale-router.toml"),
    ),
    (
        "shard-churn",
        include_str!("../../../scenarios/shard-churn.toml"),
    ),
    (
        "shard-grow-10x",
        include_str!("../../../scenarios/shard-grow-10x.toml"),
    ),
];

/// Largest cluster a scenario may ask for; Raft clusters beyond 7 voters are not a lab topic.
pub const NODES_MAX: usize = 7;

/// Why a scenario could not be loaded. Each message is one line that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither a built-in name nor a readable file.
    #[error("unknown scenario '{name}' (built-in: {known}; or give a path to a .toml file)")]
    Unknown {
        /// What the user asked for.
        name: String,
        /// Comma-separated built-in names.
        known: String,
    },
    /// The file exists but could not be read.
    #[error("cannot read scenario file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML for a scenario (a typo, a misspelled or missing key).
    #[error("{}{reason}", where_prefix(.at, .field))]
    Malformed {
        /// Where: file, line and column, when known.
        at: Option<Location>,
        /// Field path, e.g. `faults[2]`, when known.
        field: String,
        /// What the parser said, folded to one line.
        reason: String,
    },
    /// The file parsed but describes something that cannot run.
    #[error("{}{reason}", match .at { Some(_) => where_prefix(.at, .field), None => format!("invalid scenario {name}: {}", where_prefix(&None, .field)) })]
    Invalid {
        /// Scenario name.
        name: String,
        /// Field path, e.g. `faults[1].at_ms`.
        field: String,
        /// What is impossible about it.
        reason: String,
        /// Where in the file, when it came from one.
        at: Option<Location>,
    },
}

/// A place in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File path or built-in name.
    pub source_name: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// `file:line:col: field: ` (the parts that are known), in the form editors jump to.
fn where_prefix(at: &Option<Location>, field: &str) -> String {
    let mut out = String::new();
    if let Some(at) = at {
        out = format!("{}:{}:{}: ", at.source_name, at.line, at.col);
    }
    if !field.is_empty() {
        out.push_str(field);
        out.push_str(": ");
    }
    out
}

/// A "missing field" error where the table has a near miss of that key: point at the misspelled
/// key and say so, rather than at the table.
fn misspelled(text: &str, source_name: &str, table: &str, reason: &str) -> Option<ScenarioError> {
    let missing = reason.strip_prefix("missing field `")?.strip_suffix('`')?;
    let (written, (line, col)) = locate::misspelling(text, table, missing)?;
    Some(ScenarioError::Malformed {
        at: Some(Location {
            source_name: source_name.to_string(),
            line,
            col,
        }),
        field: if table.is_empty() {
            written.clone()
        } else {
            format!("{table}.{written}")
        },
        reason: format!("unknown field `{written}`; did you mean `{missing}`?"),
    })
}

/// A complete scenario: the system under test with its settings, topology, workload, faults and
/// duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScenarioFile", into = "ScenarioFile")]
pub struct Scenario {
    /// Name used on the command line and in reports.
    pub name: String,
    /// One or two sentences for the learner: what happens and what to look for.
    pub description: String,
    /// System under test, with the settings only it has.
    pub system: System,
    /// Nodes and their timing.
    pub topology: Topology,
    /// Simulated network defaults (the real driver uses the real network).
    pub network: Network,
    /// The clients and what they send.
    pub workload: Workload,
    /// Total run time, in milliseconds.
    pub duration_ms: u64,
    /// Faults at fixed times.
    pub faults: Vec<FaultStep>,
    /// Faults drawn at random from the seed, in addition to `faults`.
    pub chaos: Option<Chaos>,
}

/// A scenario as its TOML file (and its JSON form) spells it: the system's name, and each
/// system's settings table beside it. [`Scenario`] reads and writes through this shape, so files
/// and recorded runs keep their layout while the code sees one [`System`] value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    system: SystemName,
    topology: Topology,
    #[serde(default)]
    network: Network,
    workload: Workload,
    duration_ms: u64,
    #[serde(default)]
    faults: Vec<FaultStep>,
    #[serde(default)]
    chaos: Option<Chaos>,
    /// Replication and failover settings (required when `system = "postgres"`).
    #[serde(default)]
    postgres: Option<PostgresSettings>,
    /// Replica set settings (required when `system = "mongodb"`). Left out of files and JSON
    /// when absent, so other systems' recorded runs keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mongodb: Option<MongoSettings>,
    /// Sharded-cluster settings (required when `system = "sharded"`), left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sharded: Option<ShardedSettings>,
}

impl TryFrom<ScenarioFile> for Scenario {
    type Error = String;

    fn try_from(file: ScenarioFile) -> Result<Scenario, String> {
        let tables = SettingsTables {
            postgres: file.postgres,
            mongodb: file.mongodb,
            sharded: file.sharded,
        };
        let system = System::from_parts(file.system, tables)?;
        Ok(Scenario {
            name: file.name,
            description: file.description,
            system,
            topology: file.topology,
            network: file.network,
            workload: file.workload,
            duration_ms: file.duration_ms,
            faults: file.faults,
            chaos: file.chaos,
        })
    }
}

impl From<Scenario> for ScenarioFile {
    fn from(s: Scenario) -> ScenarioFile {
        let (system, tables) = s.system.into_parts();
        ScenarioFile {
            name: s.name,
            description: s.description,
            system,
            topology: s.topology,
            network: s.network,
            workload: s.workload,
            duration_ms: s.duration_ms,
            faults: s.faults,
            chaos: s.chaos,
            postgres: tables.postgres,
            mongodb: tables.mongodb,
            sharded: tables.sharded,
        }
    }
}

/// Cluster shape and Raft timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Number of voting members (3 or 5 in the shipped scenarios).
    pub nodes: usize,
    /// Leader heartbeat interval (etcd `--heartbeat-interval`, default 100 ms).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Election timeout (etcd `--election-timeout`, default 1000 ms); randomized in [t, 2t).
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    100
}

fn default_election_timeout_ms() -> u64 {
    1000
}

/// Simulated one-way message latency bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Lowest one-way latency, in milliseconds.
    pub latency_ms_min: u64,
    /// Highest one-way latency, in milliseconds.
    pub latency_ms_max: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency_ms_min: 1,
            latency_ms_max: 5,
        }
    }
}

/// Client workload: how many clients, how fast, which operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Number of independent clients; each has at most one operation in flight.
    pub clients: usize,
    /// Total operations per second across all clients (open loop, divided evenly).
    pub rate_per_s: u64,
    /// Relative weight of `put`.
    pub put: u32,
    /// Relative weight of `get`.
    pub get: u32,
    /// Relative weight of compare-and-swap.
    pub cas: u32,
    /// Number of distinct keys.
    pub keys: u32,
    /// How long a client waits for one attempt before giving up on it.
    pub timeout_ms: u64,
    /// How many further attempts a write that timed out gets, with `retry_timed_out_writes`
    /// (a refusal is not retried: like `etcd-client`, the client reports the error).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Also resend a write that timed out (up to `retries` times), as clients with automatic
    /// retries do. Its outcome stays unknown unless a resend is answered; a write may then apply
    /// twice, which the checker should catch. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_timed_out_writes: bool,
}

fn default_retries() -> u32 {
    3
}

impl Scenario {
    /// Names of the scenarios compiled into quorumlab.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _)| *name).collect()
    }

    /// Loads a built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((name, text)) = BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
            return Scenario::parse(text, name);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        Err(ScenarioError::Unknown {
            name: name_or_path.to_string(),
            known: Scenario::builtin_names().join(", "),
        })
    }

    /// Parses and validates scenario TOML; `source_name` names it in errors, which say the line,
    /// column and field path of the problem.
    pub fn parse(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let at = |field: &str, span: Option<std::ops::Range<usize>>| {
            let (line, col) = match span {
                Some(span) => locate::line_col(text, span.start),
                None => locate::field(text, field)?,
            };
            Some(Location {
                source_name: source_name.to_string(),
                line,
                col,
            })
        };
        let de = toml::Deserializer::new(text);
        let file: ScenarioFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let inner = e.into_inner();
            let reason = inner.message().replace('\n', " ");
            if let Some(hint) = misspelled(text, source_name, &field, &reason) {
                return hint;
            }
            ScenarioError::Malformed {
                at: at(&field, inner.span()),
                reason,
                field,
            }
        })?;
        let name = file.name.clone();
        let scenario = Scenario::try_from(file).map_err(|reason| ScenarioError::Invalid {
            name: name.clone(),
            field: "system".into(),
            reason,
            at: at("system", None),
        })?;
        validate::check(&scenario).map_err(|p| ScenarioError::Invalid {
            name,
            at: at(&p.field, None),
            field: p.field,
            reason: p.reason,
        })?;
        Ok(scenario)
    }

    /// The scenario as a TOML file would spell it (what [`Scenario::parse`] reads back).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Returns the scenario with a different node count, validated again.
    pub fn with_nodes(mut self, nodes: usize) -> Result<Scenario, ScenarioError> {
        self.topology.nodes = nodes;
        self.validate()?;
        Ok(self)
    }

    /// Checks everything that would make the scenario impossible to run (or a fault that could
    /// never matter); the error names the field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        validate::check(self).map_err(|p| ScenarioError::Invalid {
            name: self.name.clone(),
            field: p.field,
            reason: p.reason,
            at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Fault, NodeRef};

    #[test]
    fn every_builtin_scenario_parses_and_validates() {
        for name in Scenario::builtin_names() {
            let s = Scenario::load(name).unwrap();
            assert_eq!(s.name, name);
        }
    }

    #[test]
    fn unknown_scenario_names_the_builtins() {
        let err = Scenario::load("etcd-nope").unwrap_err().to_string();
        assert!(err.contains("unknown scenario 'etcd-nope'"), "{err}");
        assert!(err.contains("etcd-leader-kill"), "{err}");
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let err = Scenario::parse("name = ", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.toml:1:8: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn zero_nodes_and_missing_nodes_are_rejected() {
        let base = Scenario::load("etcd-leader-isolate").unwrap();
        let err = base.clone().with_nodes(0).unwrap_err().to_string();
        assert!(err.contains("topology.nodes is 0"), "{err}");
        let mut s = base;
        s.faults.push(FaultStep {
            at_ms: 10,
            fault: Fault::Crash {
                node: NodeRef::Node(crate::NodeId(9)),
            },
        });
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("names n9"), "{err}");
    }
}

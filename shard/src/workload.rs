//! Workload files: the datasets, how their fields are distributed, what queries read them, and the
//! candidate shard keys to try.
//!
//! A workload is a TOML file (see `workloads/`). Every field value is an unsigned integer: ids,
//! timestamps in milliseconds, enum codes. A shard key lists fields in order (`day(ts)` derives a
//! day number from a timestamp field) and is either ranged or hashed.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a workload could not be loaded. Each message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("cannot read workload file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML for a workload.
    #[error("malformed workload {path}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What the parser said, on one line.
        reason: String,
    },
    /// The file parsed but cannot be run.
    #[error("invalid workload {name}: {reason}")]
    Invalid {
        /// Workload name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A whole workload file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Name used in reports.
    pub name: String,
    /// What the workload models.
    #[serde(default)]
    pub description: String,
    /// Cluster settings.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// Growth factors to try, in order, when the command line does not say (default 1, 10, 100).
    #[serde(default = "default_growth")]
    pub growth: Vec<u64>,
    /// The datasets written.
    pub datasets: Vec<Dataset>,
    /// Candidate shard keys.
    pub keys: Vec<KeySpec>,
}

/// Sharded-cluster settings, MongoDB-style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Number of shards.
    pub shards: usize,
    /// A chunk splits when it grows past this many bytes (MongoDB's range size).
    pub chunk_bytes_max: u64,
    /// The balancer migrates when the fullest and emptiest shard differ by more than this many
    /// chunk sizes.
    pub imbalance_chunks: u64,
    /// Balancer rounds per growth step.
    pub balancer_rounds_per_step: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            shards: 4,
            chunk_bytes_max: 64 * 1024 * 1024,
            imbalance_chunks: 3,
            balancer_rounds_per_step: 20,
        }
    }
}

/// One collection and its write stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Collection name.
    pub name: String,
    /// Documents written per growth step at 1x (the step's factor multiplies it).
    pub writes_per_step: u64,
    /// Simulated days each growth step spans (timestamps advance over it).
    pub step_days: u64,
    /// Average document size.
    pub doc_bytes: u64,
    /// Fields and their distributions.
    pub fields: Vec<FieldSpec>,
    /// Queries against the collection.
    #[serde(default)]
    pub queries: Vec<QuerySpec>,
}

/// How one field's values are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Field name.
    pub name: String,
    /// The distribution.
    #[serde(flatten)]
    pub dist: Distribution,
}

/// A field's value distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "kebab-case")]
pub enum Distribution {
    /// Uniform over `0..cardinality`.
    Uniform {
        /// Number of distinct values.
        cardinality: u64,
    },
    /// Zipf over `cardinality` values with exponent `skew` (popular values scattered over the id
    /// space, as real ids are).
    Zipf {
        /// Number of distinct values.
        cardinality: u64,
        /// Zipf exponent (1.0 is classic; higher is more skewed).
        skew: f64,
    },
    /// A timestamp in milliseconds that only grows.
    Monotonic,
    /// A low-cardinality enum, uniform over `0..cardinality`.
    Enum {
        /// Number of distinct values.
        cardinality: u64,
    },
}

/// A query shape and how often it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Name for reports.
    pub name: String,
    /// Relative frequency.
    pub weight: u32,
    /// Fields the query fixes by equality.
    #[serde(default)]
    pub eq: Vec<String>,
    /// A timestamp field the query reads a recent range of.
    #[serde(default)]
    pub range: Option<String>,
    /// How many days back the range reaches.
    #[serde(default = "one_day")]
    pub range_days: u64,
}

fn default_growth() -> Vec<u64> {
    vec![1, 10, 100]
}

fn one_day() -> u64 {
    1
}

/// A candidate shard key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Name used with `--keys`.
    pub name: String,
    /// The dataset it shards.
    pub dataset: String,
    /// Key fields, most significant first; `day(ts)` is the day number of timestamp field `ts`.
    pub fields: Vec<String>,
    /// Hash the key (MongoDB hashed sharding: pre-split evenly, no range locality).
    #[serde(default)]
    pub hashed: bool,
}

/// A key field after parsing: a dataset field, optionally bucketed to days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyField {
    /// Index into the dataset's fields.
    pub field: usize,
    /// Whether the value is a timestamp reduced to its day.
    pub by_day: bool,
}

/// Milliseconds per day.
pub const DAY_MS: u64 = 86_400_000;

impl Workload {
    /// Reads and validates a workload file.
    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Workload::parse(&text, &path.display().to_string())
    }

    /// Parses and validates workload TOML; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Workload, WorkloadError> {
        let w: Workload = toml::from_str(text).map_err(|e| WorkloadError::Malformed {
            path: path.into(),
            reason: e.message().replace('\n', " "),
        })?;
        w.validate()?;
        Ok(w)
    }

    /// The dataset named `name`.
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// Resolves a key's fields against its dataset.
    pub fn key_fields(&self, key: &KeySpec) -> Result<Vec<KeyField>, WorkloadError> {
        let invalid = |reason: String| WorkloadError::Invalid {
            name: self.name.clone(),
            reason,
        };
        let dataset = self.dataset(&key.dataset).ok_or_else(|| {
            invalid(format!(
                "key '{}' names dataset '{}', which does not exist",
                key.name, key.dataset
            ))
        })?;
        key.fields
            .iter()
            .map(|f| {
                let (name, by_day) = match f.strip_prefix("day(").and_then(|r| r.strip_suffix(')'))
                {
                    Some(inner) => (inner, true),
                    None => (f.as_str(), false),
                };
                let field = dataset
                    .fields
                    .iter()
                    .position(|d| d.name == name)
                    .ok_or_else(|| {
                        invalid(format!(
                            "key '{}' names field '{name}', which dataset '{}' does not have",
                            key.name, dataset.name
                        ))
                    })?;
                if by_day && dataset.fields[field].dist != Distribution::Monotonic {
                    return Err(invalid(format!(
                        "key '{}': day({name}) needs a monotonic timestamp field",
                        key.name
                    )));
                }
                Ok(KeyField { field, by_day })
            })
            .collect()
    }

    /// Checks everything that would make the workload impossible to run.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let invalid = |reason: String| WorkloadError::Invalid {
            name: self.name.clone(),
            reason,
        };
        if self.cluster.shards == 0 {
            return Err(invalid(
                "cluster.shards is 0; a sharded cluster needs at least 1 shard".into(),
            ));
        }
        if self.cluster.chunk_bytes_max == 0 || self.cluster.balancer_rounds_per_step == 0 {
            return Err(invalid(
                "cluster.chunk_bytes_max and balancer_rounds_per_step must be > 0".into(),
            ));
        }
        if self.keys.is_empty() {
            return Err(invalid("no candidate keys ([[keys]])".into()));
        }
        if self.growth.is_empty() || self.growth.contains(&0) {
            return Err(invalid(
                "growth factors must be positive, e.g. growth = [1, 10, 100]".into(),
            ));
        }
        for d in &self.datasets {
            if d.writes_per_step == 0 || d.doc_bytes == 0 || d.step_days == 0 || d.fields.is_empty()
            {
                return Err(invalid(format!(
                    "dataset '{}' needs writes_per_step, doc_bytes, step_days > 0 and at least one field",
                    d.name
                )));
            }
            for f in &d.fields {
                match f.dist {
                    Distribution::Uniform { cardinality } | Distribution::Enum { cardinality }
                        if cardinality == 0 =>
                    {
                        return Err(invalid(format!("field '{}' has cardinality 0", f.name)));
                    }
                    Distribution::Zipf { cardinality, skew } if cardinality == 0 || skew <= 0.0 => {
                        return Err(invalid(format!(
                            "field '{}': zipf needs cardinality > 0 and skew > 0",
                            f.name
                        )));
                    }
                    _ => {}
                }
            }
            for q in &d.queries {
                for name in q.eq.iter().chain(&q.range) {
                    if !d.fields.iter().any(|f| &f.name == name) {
                        return Err(invalid(format!(
                            "query '{}' names field '{name}', which dataset '{}' does not have",
                            q.name, d.name
                        )));
                    }
                }
            }
        }
        for k in &self.keys {
            if k.fields.is_empty() {
                return Err(invalid(format!("key '{}' has no fields", k.name)));
            }
            self.key_fields(k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
name = "small"
[[datasets]]
name = "events"
writes_per_step = 1000
step_days = 1
doc_bytes = 100
fields = [{ name = "user", dist = "uniform", cardinality = 10 }, { name = "ts", dist = "monotonic" }]
[[keys]]
name = "user"
dataset = "events"
fields = ["user", "day(ts)"]
"#;

    #[test]
    fn parses_and_resolves_derived_key_fields() {
        let w = Workload::parse(SMALL, "small.toml").unwrap();
        let fields = w.key_fields(&w.keys[0]).unwrap();
        assert_eq!(
            fields,
            vec![
                KeyField {
                    field: 0,
                    by_day: false
                },
                KeyField {
                    field: 1,
                    by_day: true
                }
            ]
        );
    }

    #[test]
    fn key_naming_a_missing_field_is_one_line() {
        let err = Workload::parse(
            &SMALL.replace("\"user\", \"day(ts)\"", "\"tenant\""),
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "invalid workload small: key 'user' names field 'tenant', which dataset 'events' does not have");
    }

    #[test]
    fn zero_shards_and_malformed_toml_are_rejected() {
        let err =
            Workload::parse(&format!("{SMALL}\n[cluster]\nshards = 0\n"), "x.toml").unwrap_err();
        assert!(err.to_string().contains("cluster.shards is 0"), "{err}");
        let err = Workload::parse("name = [", "x.toml").unwrap_err();
        assert!(
            err.to_string().starts_with("malformed workload x.toml"),
            "{err}"
        );
    }
}

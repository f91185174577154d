//! One file per command, after mini-redis's `cmd/`: each owns its arguments (clap) and its
//! `command` function. Commands that touch a scenario hand it to [`crate::system::of`], which
//! picks the system's side once.

pub mod agent;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod compare;
pub mod demo;
pub mod engines;
pub mod kv;
pub mod load;
pub mod machines;
pub mod migrate;
pub mod run;
pub mod scenarios;
pub mod serve;
pub mod shard;
pub mod shrink;
pub mod sim;
pub mod sweep;

use anyhow::Result;
use quorumlab_experiment::Scenario;

/// The lab ran to completion and found runs that broke a safety property (exit code 1).
#[derive(Debug)]
pub struct SafetyViolation(pub String);

impl std::fmt::Display for SafetyViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SafetyViolation {}

/// What the command was asked to confirm came out false (exit code 1): e.g. the checker's
/// verdicts disagree with another checker's.
#[derive(Debug)]
pub struct Mismatch(pub String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}

/// The lab could not decide: the checker's search budget ran out (exit code 3).
#[derive(Debug)]
pub struct Inconclusive(pub String);

impl std::fmt::Display for Inconclusive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Inconclusive {}

/// Loads a built-in scenario or a file, with `--nodes` applied (and validated) when given.
pub fn load_scenario(name: &str, nodes: Option<usize>) -> Result<Scenario> {
    let scenario = Scenario::load(name)?;
    Ok(match nodes {
        Some(n) => scenario.with_nodes(n)?,
        None => scenario,
    })
}

//! Storage engines side by side: Postgres 15 (a B-tree primary key) and RocksDB (an LSM tree)
//! given identical key/value streams, measured for throughput, coordinated-omission corrected
//! latency, footprint on disk, space and write amplification, and RocksDB's compaction debt.
//!
//! The shape: [`workload`] draws the operations (pure, seeded); [`engine::Engine`] is what each
//! engine answers ([`rocks::Rocks`], [`postgres::Postgres`]); [`measure`] drives one phase;
//! [`experiment::run`] walks scales, key distributions and mixes; [`report`] and [`chart`] turn
//! the [`experiment::Outcome`] into markdown, SVG and a verdict table.

pub mod chart;
pub mod engine;
pub mod experiment;
pub mod measure;
pub mod postgres;
pub mod report;
pub mod rocks;
pub mod server;
pub mod workload;

pub use experiment::{run, Config, Interrupted, Measured, Outcome, PostgresSource, Progress};

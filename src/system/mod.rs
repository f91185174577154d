//! Everything the command line does differently per system under test, behind one trait.
//!
//! A scenario's [`System`] is decided once, when the file is read; [`of`] turns it into the one
//! [`SystemCli`] that simulates, sweeps, runs, compares and brings up a lab for it. Commands never
//! ask "is this Postgres?": they call the trait, and a system that cannot do what is asked refuses
//! in one line (exit 2) through the trait's default methods or its own checks.
//!
//! Adding a system: a settings type and a [`System`] variant (`experiment`), a simulator module
//! (`sim`), a real lab module (`cluster`), a folder here implementing [`SystemCli`], and one arm in
//! [`of`].

mod cli;
pub mod etcd;
mod mongodb;
mod postgres;
mod sharded;

pub use cli::{
    next_step, shell_word, Build, RealOptions, SimOptions, SweepFailed, SweepOptions, SystemCli,
    UpOptions,
};
use quorumlab_experiment::{Scenario, System};

/// The one place that maps a scenario's system to its command-line side.
pub fn of(scenario: &Scenario) -> Box<dyn SystemCli + '_> {
    match &scenario.system {
        System::Etcd => Box::new(etcd::Etcd { scenario }),
        System::Postgres(settings) => Box::new(postgres::Postgres { scenario, settings }),
        System::Mongodb(settings) => Box::new(mongodb::Mongodb { scenario, settings }),
        System::Sharded(settings) => Box::new(sharded::Sharded { scenario, settings }),
    }
}

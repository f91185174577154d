//! The system under test. A scenario names it once (`system = "etcd"`), and everything that differs
//! between systems hangs off this one value: its settings here, its simulator and real lab in the
//! crates above, chosen by one `match` in the command line.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::postgres::PostgresSettings;

/// The database system a scenario exercises, with the settings only that system has.
#[derive(Debug, Clone, PartialEq)]
pub enum System {
    /// An etcd cluster: Raft consensus under a linearizable key-value store.
    Etcd,
    /// Postgres streaming replication managed by Patroni, with etcd as its DCS.
    Postgres(PostgresSettings),
}

/// A system's name as scenario files spell it (`system = "postgres"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemName {
    /// `etcd`.
    Etcd,
    /// `postgres`.
    Postgres,
}

impl SystemName {
    /// Every system, in the order `--help` lists them.
    pub const ALL: [SystemName; 2] = [SystemName::Etcd, SystemName::Postgres];

    /// The built-in scenario whose settings `cluster up` uses when none is named.
    pub fn lab_scenario(self) -> &'static str {
        match self {
            SystemName::Etcd => "etcd-leader-kill",
            SystemName::Postgres => "pg-failover",
        }
    }
}

impl std::str::FromStr for SystemName {
    type Err = String;

    fn from_str(s: &str) -> Result<SystemName, String> {
        SystemName::ALL
            .into_iter()
            .find(|name| name.to_string() == s)
            .ok_or_else(|| {
                let known: Vec<String> = SystemName::ALL.iter().map(|n| n.to_string()).collect();
                format!("unknown system '{s}' (known: {})", known.join(", "))
            })
    }
}

impl fmt::Display for SystemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SystemName::Etcd => "etcd",
            SystemName::Postgres => "postgres",
        })
    }
}

impl System {
    /// The system's name, as in scenario files.
    pub fn name(&self) -> SystemName {
        match self {
            System::Etcd => SystemName::Etcd,
            System::Postgres(_) => SystemName::Postgres,
        }
    }

    /// Puts a file's system name and its settings tables together; a settings table that belongs
    /// to another system, or a missing one, is refused in one line.
    pub fn from_parts(
        name: SystemName,
        postgres: Option<PostgresSettings>,
    ) -> Result<System, String> {
        match (name, postgres) {
            (SystemName::Etcd, None) => Ok(System::Etcd),
            (SystemName::Postgres, Some(pg)) => Ok(System::Postgres(pg)),
            (SystemName::Postgres, None) => Err(
                "a postgres scenario needs a [postgres] section (ttl_s, loop_wait_s, retry_timeout_s)"
                    .into(),
            ),
            (SystemName::Etcd, Some(_)) => {
                Err("[postgres] settings belong to system = \"postgres\" scenarios".into())
            }
        }
    }

    /// The inverse of [`System::from_parts`].
    pub fn into_parts(self) -> (SystemName, Option<PostgresSettings>) {
        match self {
            System::Etcd => (SystemName::Etcd, None),
            System::Postgres(pg) => (SystemName::Postgres, Some(pg)),
        }
    }
}

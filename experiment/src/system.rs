//! The system under test. A scenario names it once (`system = "etcd"`), and everything that differs
//! between systems hangs off this one value: its settings here, its simulator and real lab in the
//! crates above, chosen by one `match` in the command line.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mongodb::MongoSettings;
use crate::postgres::PostgresSettings;

/// The database system a scenario exercises, with the settings only that system has.
#[derive(Debug, Clone, PartialEq)]
pub enum System {
    /// An etcd cluster: Raft consensus under a linearizable key-value store.
    Etcd,
    /// Postgres streaming replication managed by Patroni, with etcd as its DCS.
    Postgres(PostgresSettings),
    /// A MongoDB replica set (protocol version 1): elections, the oplog, write concerns.
    Mongodb(MongoSettings),
}

/// A system's name as scenario files spell it (`system = "postgres"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemName {
    /// `etcd`.
    Etcd,
    /// `postgres`.
    Postgres,
    /// `mongodb`.
    Mongodb,
}

impl SystemName {
    /// Every system, in the order `--help` lists them.
    pub const ALL: [SystemName; 3] = [SystemName::Etcd, SystemName::Postgres, SystemName::Mongodb];

    /// The built-in scenario whose settings `cluster up` uses when none is named.
    pub fn lab_scenario(self) -> &'static str {
        match self {
            SystemName::Etcd => "etcd-leader-kill",
            SystemName::Postgres => "pg-failover",
            SystemName::Mongodb => "mongo-primary-kill",
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
            SystemName::Mongodb => "mongodb",
        })
    }
}

impl System {
    /// The system's name, as in scenario files.
    pub fn name(&self) -> SystemName {
        match self {
            System::Etcd => SystemName::Etcd,
            System::Postgres(_) => SystemName::Postgres,
            System::Mongodb(_) => SystemName::Mongodb,
        }
    }

    /// Puts a file's system name and its settings tables together; a settings table that belongs
    /// to another system, or a missing one, is refused in one line.
    pub fn from_parts(name: SystemName, tables: SettingsTables) -> Result<System, String> {
        let SettingsTables { postgres, mongodb } = tables;
        match (name, postgres, mongodb) {
            (SystemName::Etcd, None, None) => Ok(System::Etcd),
            (SystemName::Postgres, Some(pg), None) => Ok(System::Postgres(pg)),
            (SystemName::Mongodb, None, Some(mongo)) => Ok(System::Mongodb(mongo)),
            (SystemName::Postgres, None, _) => Err(
                "a postgres scenario needs a [postgres] section (ttl_s, loop_wait_s, retry_timeout_s)"
                    .into(),
            ),
            (SystemName::Mongodb, _, None) => Err(
                "a mongodb scenario needs a [mongodb] section (it may be empty: every setting has MongoDB's default)"
                    .into(),
            ),
            (_, Some(_), _) => {
                Err("[postgres] settings belong to system = \"postgres\" scenarios".into())
            }
            (_, _, Some(_)) => {
                Err("[mongodb] settings belong to system = \"mongodb\" scenarios".into())
            }
        }
    }

    /// The inverse of [`System::from_parts`].
    pub fn into_parts(self) -> (SystemName, SettingsTables) {
        let none = SettingsTables::default();
        match self {
            System::Etcd => (SystemName::Etcd, none),
            System::Postgres(pg) => (
                SystemName::Postgres,
                SettingsTables {
                    postgres: Some(pg),
                    ..none
                },
            ),
            System::Mongodb(mongo) => (
                SystemName::Mongodb,
                SettingsTables {
                    mongodb: Some(mongo),
                    ..none
                },
            ),
        }
    }
}

/// Each system's settings table of a scenario file, as read (at most one belongs there).
#[derive(Debug, Clone, Default)]
pub struct SettingsTables {
    /// `[postgres]`.
    pub postgres: Option<PostgresSettings>,
    /// `[mongodb]`.
    pub mongodb: Option<MongoSettings>,
}

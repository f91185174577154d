//! The system under test. A scenario names it once (`system = "etcd"`), and everything that differs
//! between systems hangs off this one value: its settings here, its simulator and real lab in the
//! crates above, chosen by one `match` in the command line.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mongodb::MongoSettings;
use crate::postgres::PostgresSettings;
use crate::sharded::ShardedSettings;

/// The database system a scenario exercises, with the settings only that system has.
#[derive(Debug, Clone, PartialEq)]
pub enum System {
    /// An etcd cluster: Raft consensus under a linearizable key-value store.
    Etcd,
    /// Postgres streaming replication managed by Patroni, with etcd as its DCS.
    Postgres(PostgresSettings),
    /// A MongoDB replica set (protocol version 1): elections, the oplog, write concerns.
    Mongodb(MongoSettings),
    /// A sharded cluster: config servers (Raft), shards and routers, and the balancer's chunk
    /// migrations between shards.
    Sharded(ShardedSettings),
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
    /// `sharded`.
    Sharded,
}

impl SystemName {
    /// Every system, in the order `--help` lists them.
    pub const ALL: [SystemName; 4] = [
        SystemName::Etcd,
        SystemName::Postgres,
        SystemName::Mongodb,
        SystemName::Sharded,
    ];

    /// The built-in scenario whose settings `cluster up` uses when none is named.
    pub fn lab_scenario(self) -> &'static str {
        match self {
            SystemName::Etcd => "etcd-leader-kill",
            SystemName::Postgres => "pg-failover",
            SystemName::Mongodb => "mongo-primary-kill",
            SystemName::Sharded => "shard-add-shard",
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
            SystemName::Sharded => "sharded",
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
            System::Sharded(_) => SystemName::Sharded,
        }
    }

    /// Puts a file's system name and its settings tables together; a settings table that belongs
    /// to another system, or a missing one, is refused in one line.
    pub fn from_parts(name: SystemName, tables: SettingsTables) -> Result<System, String> {
        let SettingsTables {
            postgres,
            mongodb,
            sharded,
        } = tables;
        let given = [
            ("postgres", postgres.is_some()),
            ("mongodb", mongodb.is_some()),
            ("sharded", sharded.is_some()),
        ];
        if let Some((table, _)) = given
            .iter()
            .find(|(table, present)| *present && *table != name.to_string())
        {
            return Err(format!(
                "[{table}] settings belong to system = \"{table}\" scenarios"
            ));
        }
        match name {
            SystemName::Etcd => Ok(System::Etcd),
            SystemName::Postgres => postgres.map(System::Postgres).ok_or_else(|| {
                "a postgres scenario needs a [postgres] section (ttl_s, loop_wait_s, retry_timeout_s)"
                    .into()
            }),
            SystemName::Mongodb => mongodb.map(System::Mongodb).ok_or_else(|| {
                "a mongodb scenario needs a [mongodb] section (it may be empty: every setting has MongoDB's default)"
                    .into()
            }),
            SystemName::Sharded => sharded.map(System::Sharded).ok_or_else(|| {
                "a sharded scenario needs a [sharded] section (it may be empty: 3 config servers, 3 shards, 2 routers)"
                    .into()
            }),
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
            System::Sharded(sharded) => (
                SystemName::Sharded,
                SettingsTables {
                    sharded: Some(sharded),
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
    /// `[sharded]`.
    pub sharded: Option<ShardedSettings>,
}

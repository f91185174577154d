//! Postgres under Patroni on real hosts, with the lab's etcd as Patroni's DCS: the settings a lab
//! is made with ([`settings`]), its lifecycle and the nodes a workload talks to ([`lab`]), and one
//! real run of a Postgres scenario ([`run`]), on a namespace lab or an inventory's hosts
//! ([`inventory`]).

pub mod inventory;
pub mod lab;
pub mod run;
pub mod settings;

pub use inventory::run_postgres_on_inventory;
pub use lab::{PgNodeStatus, PgNodes, PATRONI_BINARY};
pub use run::{run_on_lab, run_on_urls, run_postgres, PgRealRun};
pub use settings::{PatroniSettings, PgCluster};

//! etcd on real hosts: a cluster's lifecycle ([`lab`]: `cluster up etcd`, status, the leader
//! poller's probe) and one real run of an etcd scenario ([`run`]: the `etcd-client` workload,
//! faults through the agents, the same measurements as the simulator).

pub mod lab;
pub mod run;

pub use lab::{EtcdTiming, MemberStatus, StatusProbe, ETCD_BINARY};
pub use run::{run_etcd, run_etcd_on_inventory, RealRun};

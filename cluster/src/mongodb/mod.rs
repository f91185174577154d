//! MongoDB replica sets, driven through the official driver: a set the user runs, named by its
//! URI (`--target mongodb://h1,h2,h3/?replicaSet=rs0`, step-downs only), or the set Ansible's
//! `mongodb` role made on an inventory's `mongodb` group (`--inventory`, with kills and
//! partitions through the hosts' agents). No `mongod` can be installed on the lab's own
//! machines, so there is no MongoDB lab to bring up here.

mod inventory;
mod run;
mod uri;

pub use inventory::run_mongo_on_inventory;
pub use run::{run_on_uri, MongoRealRun, TargetSet};
pub use uri::ReplSetUri;

//! What the real-cluster tests share: whether this machine can run a lab (and, if not, why the
//! test is skipped), one lab at a time, and a lab directory torn down even when an assertion fails.

#![allow(dead_code)] // Each test binary uses the part it needs.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use quorumlab_cluster::lab::Lab;

/// A program a lab runs, and what to say when it is missing.
pub type Requirement = (&'static str, &'static str);

/// etcd, which every lab runs.
pub const ETCD: Requirement = (
    "/usr/bin/etcd",
    "etcd is not installed (apt-get install etcd-server)",
);
/// Patroni, which manages a Postgres lab's nodes.
pub const PATRONI: Requirement = (
    "/usr/bin/patroni",
    "Patroni is not installed (apt-get install patroni)",
);
/// Postgres 15 itself.
pub const POSTGRES: Requirement = (
    "/usr/lib/postgresql/15/bin/postgres",
    "Postgres 15 is not installed (apt-get install postgresql-15)",
);

/// Why a lab cannot run here (not root, or a program missing), or `None` when it can.
pub fn skip_reason(needs: &[Requirement]) -> Option<&'static str> {
    if !quorumlab_cluster::hosts::is_root() {
        return Some("not root: network namespaces need CAP_NET_ADMIN");
    }
    needs
        .iter()
        .find(|(program, _)| !std::path::Path::new(program).exists())
        .map(|(_, why)| *why)
}

/// Whether the test must be skipped; says why and counts it when it is (and fails instead under
/// `QUORUMLAB_REQUIRE_REAL=1`).
pub fn skipped(needs: &[Requirement]) -> bool {
    let why = skip_reason(needs);
    if let Some(why) = why {
        quorumlab_testkit::skip(why);
    }
    why.is_some()
}

/// Labs pick the first free network id: one lab at a time in a test binary.
pub fn one_lab() -> MutexGuard<'static, ()> {
    static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A lab's state directory; the lab in it is taken down, and the directory removed, on drop.
pub struct LabDir(pub PathBuf);

impl LabDir {
    /// A fresh directory under the temp dir, named for the test and this process.
    pub fn new(tag: &str) -> LabDir {
        LabDir(std::env::temp_dir().join(format!("quorumlab-lab-{tag}-{}", std::process::id())))
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! Hosts on one machine: one Linux network namespace per host, joined to a bridge by veth pairs.
//!
//! Host `i` of lab `id` is namespace `ql{id}-n{i}` with address `10.77.{id}.{10 + i}/24` on its
//! `eth0`; the bridge `ql{id}br` in the root namespace holds `10.77.{id}.1`, which is where the
//! driver's own traffic comes from. Nothing here is routed off the machine: the subnet exists only
//! on this bridge. Creating hosts needs root (CAP_NET_ADMIN).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use quorumlab_experiment::node::NodeId;

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Not root: namespaces cannot be created.
    #[error("creating network namespaces needs root (CAP_NET_ADMIN); run as root or use real VMs")]
    NotRoot,
    /// An `ip` command failed.
    #[error("`{command}` failed: {stderr}")]
    Ip {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
}

/// The hosts of one lab network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabNet {
    /// Lab number (third octet of the subnet), 1..=250.
    pub id: u8,
    /// Number of hosts.
    pub hosts: usize,
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) -> Result<(), HostError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HostError::Ip {
            command: format!("ip {}", args.join(" ")),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostError::Ip {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl LabNet {
    /// Namespace of host `i`.
    pub fn namespace(&self, host: NodeId) -> String {
        format!("ql{}-{host}", self.id)
    }

    /// Address of host `i`.
    pub fn addr(&self, host: NodeId) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, self.id, 10 + host.0 as u8))
    }

    /// Every host of the lab, `n1` first.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> {
        NodeId::all(self.hosts)
    }

    /// The driver's address on the bridge.
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, self.id, 1))
    }

    fn bridge(&self) -> String {
        format!("ql{}br", self.id)
    }

    fn veth(&self, host: NodeId) -> String {
        format!("ql{}v{}", self.id, host.0)
    }

    /// Creates the bridge and every host. On failure, removes whatever it had created.
    pub fn create(&self) -> Result<(), HostError> {
        assert!(self.id >= 1 && self.id <= 250 && self.hosts >= 1 && self.hosts <= 200);
        if !is_root() {
            return Err(HostError::NotRoot);
        }
        let result = self.try_create();
        if result.is_err() {
            self.destroy();
        }
        result
    }

    fn try_create(&self) -> Result<(), HostError> {
        let bridge = self.bridge();
        let gateway = format!("{}/24", self.gateway());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &gateway, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for host in self.nodes() {
            let ns = self.namespace(host);
            let veth = self.veth(host);
            let addr = format!("{}/24", self.addr(host));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Removes every host and the bridge; whatever is already gone is skipped, so it is safe to
    /// call twice or after a partial failure.
    pub fn destroy(&self) {
        for host in self.nodes() {
            let _ = ip(&["link", "del", &self.veth(host)]);
            let _ = ip(&["netns", "del", &self.namespace(host)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }

    /// Whether the bridge of this lab exists (a lab with this id is up).
    pub fn exists(&self) -> bool {
        Command::new("ip")
            .args(["link", "show", &self.bridge()])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

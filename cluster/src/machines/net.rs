//! The machines' network: a bridge on the host that holds the gateway address, and an nftables
//! table that masquerades the machines' traffic so apt inside them reaches the package mirror.
//!
//! Machine `i` of set `id` has `10.78.{id}.{10 + i}/24`; the bridge `qlm{id}br` holds
//! `10.78.{id}.1`. The nftables table `ip qlm{id}_nat` is the lab's only change to the host's
//! firewall, and IPv4 forwarding is switched on only while machines are up and then set back.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use quorumlab_experiment::node::NodeId;
use serde::{Deserialize, Serialize};

use super::{run_command, MachineError};

const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The network of one set of machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineNet {
    /// Set number (third octet of the subnet), 1..=250.
    pub id: u8,
    /// Number of machines.
    pub machines: usize,
    /// `ip_forward` as it was before `up`, set back by `down`.
    pub forward_before: String,
}

impl MachineNet {
    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("qlm{}br", self.id)
    }

    /// The nftables table that masquerades the machines' traffic.
    pub fn nat_table(&self) -> String {
        format!("qlm{}_nat", self.id)
    }

    /// The systemd-nspawn machine name of `node`.
    pub fn machine(&self, node: NodeId) -> String {
        format!("qlm{}-{node}", self.id)
    }

    /// Address of `node`.
    pub fn addr(&self, node: NodeId) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 78, self.id, 10 + node.0 as u8))
    }

    /// The host's address on the bridge (the machines' gateway).
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 78, self.id, 1))
    }

    /// Whether a bridge of this set exists (such a set is up).
    pub fn exists(id: u8) -> bool {
        Command::new("ip")
            .args(["link", "show", &format!("qlm{id}br")])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Makes the bridge and the NAT table and switches forwarding on.
    pub fn create(&self) -> Result<(), MachineError> {
        let bridge = self.bridge();
        let gateway = format!("{}/24", self.gateway());
        run_command(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]))?;
        run_command(Command::new("ip").args(["addr", "add", &gateway, "dev", &bridge]))?;
        run_command(Command::new("ip").args(["link", "set", &bridge, "up"]))?;
        let subnet = format!("10.78.{}.0/24", self.id);
        let rules = format!(
            "table ip {table} {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr {subnet} oifname != \"{bridge}\" masquerade\n }}\n}}\n",
            table = self.nat_table()
        );
        let rules_file = std::env::temp_dir().join(format!("{}.nft", self.nat_table()));
        std::fs::write(&rules_file, rules).map_err(|e| MachineError::state(&rules_file, e))?;
        let loaded = run_command(Command::new("nft").arg("-f").arg(&rules_file));
        let _ = std::fs::remove_file(&rules_file);
        loaded?;
        std::fs::write(FORWARD, "1\n")
            .map_err(|e| MachineError::state(std::path::Path::new(FORWARD), e))
    }

    /// Removes the NAT table and the bridge and sets forwarding back; whatever is already gone is
    /// skipped, so it is safe to call twice.
    pub fn destroy(&self) {
        let _ = run_command(Command::new("nft").args(["delete", "table", "ip", &self.nat_table()]));
        let _ = run_command(Command::new("ip").args(["link", "del", &self.bridge()]));
        if !self.forward_before.trim().is_empty() {
            let _ = std::fs::write(FORWARD, &self.forward_before);
        }
    }

    /// `ip_forward` now.
    pub fn forward_now() -> String {
        std::fs::read_to_string(FORWARD).unwrap_or_default()
    }
}

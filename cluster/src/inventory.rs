//! The inventory: one file that names the lab's hosts for Ansible *and* for the driver.
//!
//! It is an ordinary Ansible YAML inventory. Ansible reads it to provision the hosts
//! (`ansible/site.yml`); `quorumlab run --inventory` reads the same file to find each host's
//! address, its agent and the lab's TLS material. Hosts are listed once under `all.hosts`, with
//! `ansible_host` as their address, and put into the groups `etcd`, `postgres`, `mongodb`,
//! `service` and `shards`. Inside a group the driver numbers hosts in the order the file lists them: the first
//! host of the `etcd` group is `n1` of an etcd scenario, whatever its name.
//!
//! ```yaml
//! all:
//!   vars:
//!     quorumlab_agent_port: 7443
//!     quorumlab_agent_metrics_port: 7444            # the agents' GET /metrics
//!     quorumlab_pki_dir: /var/lib/quorumlab/pki      # lab CA, driver and host certificates
//!   hosts:
//!     db-a: { ansible_host: 192.0.2.11 }
//!     db-b: { ansible_host: 192.0.2.12 }
//!     db-c: { ansible_host: 192.0.2.13 }
//!   children:
//!     etcd: { hosts: { db-a: {}, db-b: {}, db-c: {} } }
//!     postgres: { hosts: { db-a: {}, db-b: {}, db-c: {} } }
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The agent's metrics port where the inventory does not say (`quorumlab_agent_metrics_port`;
/// Ansible's agent role serves metrics there).
pub const AGENT_METRICS_PORT_DEFAULT: u16 = 7444;

/// The agent's TCP port where the inventory does not say (`quorumlab_agent_port`).
pub const AGENT_PORT_DEFAULT: u16 = 7443;

/// Why an inventory cannot be used; one line each.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file cannot be read.
    #[error("inventory {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The file is not a usable inventory.
    #[error("inventory {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the host, group or variable.
        reason: String,
    },
}

/// One host as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryHost {
    /// The inventory's name for it (`n1`, `db-a`).
    pub name: String,
    /// Its address (`ansible_host`).
    pub addr: IpAddr,
    /// Its agent's port.
    pub agent_port: u16,
    /// The port of its agent's `GET /metrics` (`None`: the agent serves none).
    #[serde(default)]
    pub metrics_port: Option<u16>,
}

/// A group of the inventory, in the order the file lists its hosts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Group(pub Vec<InventoryHost>);

/// What the driver reads from an inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    /// Every host, in the order of `all.hosts`.
    pub hosts: Vec<InventoryHost>,
    /// Hosts running etcd.
    pub etcd: Group,
    /// Hosts running Postgres under Patroni.
    pub postgres: Group,
    /// Hosts running mongod.
    pub mongodb: Group,
    /// Hosts running the reference service.
    pub service: Group,
    /// Hosts running a plain Postgres shard (logical WAL, port `shard_pg_port`), `s1` first.
    #[serde(default)]
    pub shards: Group,
    /// Where the lab's CA, the driver's client certificate and the agent token are.
    pub pki_dir: PathBuf,
    /// Every variable of `all.vars`, for settings a system reads (`etcd_heartbeat_ms`, ...).
    pub vars: serde_yaml::Mapping,
}

/// The file's shape: Ansible's YAML inventory, with only what the driver needs.
#[derive(Deserialize)]
struct FileShape {
    all: AllShape,
}

#[derive(Deserialize)]
struct AllShape {
    #[serde(default)]
    vars: serde_yaml::Mapping,
    /// Host name to its variables; serde_yaml's `Mapping` keeps the file's order.
    #[serde(default)]
    hosts: Option<serde_yaml::Mapping>,
    #[serde(default)]
    children: serde_yaml::Mapping,
}

impl Inventory {
    /// Reads an inventory file and checks that every group names known hosts with addresses.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|e| InventoryError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Inventory::parse(path, &text)
    }

    /// Parses inventory text; `path` is named in errors and resolves relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        let invalid = |reason: String| InventoryError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let file: FileShape =
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string().replace('\n', " ")))?;
        let all = file.all;
        let ports = Ports {
            agent: port_var(
                all.vars.get("quorumlab_agent_port"),
                "all.vars",
                "quorumlab_agent_port",
                AGENT_PORT_DEFAULT,
            )
            .map_err(invalid)?,
            metrics: port_var(
                all.vars.get("quorumlab_agent_metrics_port"),
                "all.vars",
                "quorumlab_agent_metrics_port",
                AGENT_METRICS_PORT_DEFAULT,
            )
            .map_err(invalid)?,
        };
        let mut hosts = Vec::new();
        for (name, vars) in all.hosts.unwrap_or_default() {
            let name = name
                .as_str()
                .ok_or_else(|| invalid("all.hosts: a host name that is not a string".into()))?;
            hosts.push(host_of(name, &vars, ports).map_err(invalid)?);
        }
        let group = |name: &str| -> Result<Group, InventoryError> {
            let Some(g) = all.children.get(name) else {
                return Ok(Group::default());
            };
            let members = g.get("hosts").and_then(|h| h.as_mapping());
            let mut out = Vec::new();
            for (host, _) in members.into_iter().flatten() {
                let host = host.as_str().unwrap_or_default();
                let found = hosts.iter().find(|h| h.name == host).ok_or_else(|| {
                    invalid(format!(
                        "children.{name}.hosts.{host}: not listed under all.hosts with an ansible_host"
                    ))
                })?;
                out.push(found.clone());
            }
            Ok(Group(out))
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let pki_dir = match all.vars.get("quorumlab_pki_dir").and_then(|v| v.as_str()) {
            Some(dir) => base.join(dir),
            None => base.join("pki"),
        };
        Ok(Inventory {
            path: path.to_path_buf(),
            etcd: group("etcd")?,
            postgres: group("postgres")?,
            mongodb: group("mongodb")?,
            service: group("service")?,
            shards: group("shards")?,
            hosts,
            pki_dir,
            vars: all.vars,
        })
    }

    /// A whole-number variable of `all.vars`, if set.
    pub fn var_u64(&self, name: &str) -> Result<Option<u64>, InventoryError> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| InventoryError::Invalid {
                    path: self.path.display().to_string(),
                    reason: format!("all.vars.{name}: not a whole number"),
                }),
        }
    }

    /// A string variable of `all.vars`, if set.
    pub fn var_str(&self, name: &str) -> Option<&str> {
        self.vars.get(name).and_then(|v| v.as_str())
    }
}

fn port_of(v: &serde_yaml::Value) -> Option<u16> {
    v.as_u64()
        .or_else(|| v.as_str()?.parse().ok())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p > 0)
}

/// The agent's ports where a host does not name its own.
#[derive(Clone, Copy)]
struct Ports {
    agent: u16,
    metrics: u16,
}

/// The port `value` of `key` (at `place` in the file), or `default` where it is not set.
fn port_var(
    value: Option<&serde_yaml::Value>,
    place: &str,
    key: &str,
    default: u16,
) -> Result<u16, String> {
    match value {
        None => Ok(default),
        Some(v) => port_of(v).ok_or_else(|| format!("{place}.{key}: not a port number")),
    }
}

fn host_of(name: &str, vars: &serde_yaml::Value, ports: Ports) -> Result<InventoryHost, String> {
    let addr = vars
        .get("ansible_host")
        .and_then(|a| a.as_str())
        .ok_or_else(|| {
            format!("all.hosts.{name}: no ansible_host (the driver needs an address)")
        })?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("all.hosts.{name}.ansible_host: '{addr}' is not an IP address"))?;
    let place = format!("all.hosts.{name}");
    Ok(InventoryHost {
        name: name.to_string(),
        addr,
        agent_port: port_var(
            vars.get("quorumlab_agent_port"),
            &place,
            "quorumlab_agent_port",
            ports.agent,
        )?,
        metrics_port: Some(port_var(
            vars.get("quorumlab_agent_metrics_port"),
            &place,
            "quorumlab_agent_metrics_port",
            ports.metrics,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = "all:\n  vars:\n    quorumlab_agent_port: 7443\n    etcd_heartbeat_ms: 100\n  hosts:\n    db-b: { ansible_host: 10.0.0.12 }\n    db-a: { ansible_host: 10.0.0.11, quorumlab_agent_port: 9000 }\n  children:\n    etcd:\n      hosts: { db-b: {}, db-a: {} }\n    postgres:\n      hosts: { db-a: {} }\n";

    #[test]
    fn groups_keep_the_files_order_and_hosts_their_ports() {
        let inv = Inventory::parse(Path::new("/x/inv.yml"), THREE).unwrap();
        let names: Vec<&str> = inv.etcd.0.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["db-b", "db-a"]);
        assert_eq!(inv.etcd.0[1].agent_port, 9000);
        assert_eq!(inv.etcd.0[0].agent_port, 7443);
        assert_eq!(inv.etcd.0[0].metrics_port, Some(AGENT_METRICS_PORT_DEFAULT));
        assert_eq!(inv.postgres.0.len(), 1);
        assert!(inv.mongodb.0.is_empty());
        assert_eq!(inv.pki_dir, Path::new("/x/pki"));
        assert_eq!(inv.var_u64("etcd_heartbeat_ms").unwrap(), Some(100));
    }

    #[test]
    fn a_group_naming_an_unknown_host_is_refused_by_name() {
        let text = THREE.replace("hosts: { db-a: {} }", "hosts: { db-z: {} }");
        let err = Inventory::parse(Path::new("inv.yml"), &text).unwrap_err();
        assert!(
            err.to_string().contains("children.postgres.hosts.db-z"),
            "{err}"
        );
    }

    #[test]
    fn a_metrics_port_that_is_not_one_is_refused_by_place() {
        let text = THREE.replace(
            "quorumlab_agent_port: 9000",
            "quorumlab_agent_metrics_port: http",
        );
        let err = Inventory::parse(Path::new("inv.yml"), &text).unwrap_err();
        assert!(
            err.to_string()
                .contains("all.hosts.db-a.quorumlab_agent_metrics_port: not a port number"),
            "{err}"
        );
    }

    #[test]
    fn a_host_without_an_address_is_refused() {
        let text = "all:\n  hosts:\n    n1: {}\n";
        let err = Inventory::parse(Path::new("inv.yml"), text).unwrap_err();
        assert!(
            err.to_string().contains("all.hosts.n1: no ansible_host"),
            "{err}"
        );
    }
}

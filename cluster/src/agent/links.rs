//! The host's links to its peers, cut and healed with one nftables table of the agent's own
//! (`inet quorumlab`), rebuilt whole in one transaction at every change, and removed when the
//! agent stops.
//!
//! A two-way cut drops what the host sends to the peer (output) and what it receives from it
//! (input). A one-way cut drops only what arrives from the peer, on the receiver, as a real
//! network fault would: the peer is not told (no error on send, unlike a blackhole route), and
//! what this host sends still arrives. TCP connections across such a link stall both ways all the
//! same, because their acknowledgements are what is lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use tonic::Status;

/// The agent's nftables table.
const TABLE: &str = "quorumlab";

/// How a peer's link is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing passes either way.
    Both,
    /// What the peer sends is dropped here; what this host sends still arrives.
    Inbound,
}

/// Runs `nft -f -` with `script` on its standard input.
fn nft(script: &str) -> Result<(), Status> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Status::failed_precondition(format!("cannot run nft: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| Status::internal(format!("nft: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Status::internal(format!("nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Status::internal(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The table for the links cut now: one rule per cut peer and direction.
fn table_for(cut: &BTreeMap<String, (IpAddr, Cut)>) -> String {
    let mut input = String::new();
    let mut output = String::new();
    for (addr, how) in cut.values() {
        let family = if addr.is_ipv4() { "ip" } else { "ip6" };
        input += &format!("  {family} saddr {addr} drop\n");
        if *how == Cut::Both {
            output += &format!("  {family} daddr {addr} drop\n");
        }
    }
    // Declaring the table first makes the delete succeed when none exists yet; all three
    // statements apply in one transaction, so no packet sees a half-built table.
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n chain input {{\n  type filter hook input priority filter; policy accept;\n{input} }}\n chain output {{\n  type filter hook output priority filter; policy accept;\n{output} }}\n}}\n"
    )
}

/// Makes the host's table say exactly what `cut` says.
pub fn apply(cut: &BTreeMap<String, (IpAddr, Cut)>) -> Result<(), Status> {
    nft(&table_for(cut))
}

/// Removes the agent's table (on shutdown: every link healed).
pub fn remove_table() {
    let _ = nft(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n"));
}

/// Whether `nft` can load a table here.
pub fn has_nftables() -> bool {
    nft(&format!(
        "table inet {TABLE}_probe\ndelete table inet {TABLE}_probe\n"
    ))
    .is_ok()
}

/// Whether the kernel has the qdisc `kind` (`netem`, `tbf`): tried on a veth pair made for the
/// probe and removed again, so no real link is touched (veth, because the dummy module may not be
/// loaded, and a container cannot load it).
pub fn has_qdisc(kind: &str) -> bool {
    let link = format!("qlprobe{}", std::process::id() % 10_000);
    let ok = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok(&[
        "ip",
        "link",
        "add",
        &link,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{link}p"),
    ]) {
        return false;
    }
    let params: &[&str] = if kind == "tbf" {
        &[
            "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms",
        ]
    } else {
        &[kind]
    };
    let mut add = vec!["tc", "qdisc", "add", "dev", &link, "root"];
    add.extend(params);
    let has = ok(&add);
    let _ = ok(&["ip", "link", "del", &link]);
    has
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_way_cut_drops_only_input_and_a_two_way_cut_both() {
        let cut = BTreeMap::from([
            (
                "n2".to_string(),
                ("10.0.0.2".parse().unwrap(), Cut::Inbound),
            ),
            ("n3".to_string(), ("10.0.0.3".parse().unwrap(), Cut::Both)),
        ]);
        let table = table_for(&cut);
        assert!(table.contains("ip saddr 10.0.0.2 drop"));
        assert!(!table.contains("ip daddr 10.0.0.2 drop"));
        assert!(table.contains("ip saddr 10.0.0.3 drop"));
        assert!(table.contains("ip daddr 10.0.0.3 drop"));
    }
}

/// What the host's outgoing traffic is shaped with now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shaping {
    /// Highest added delay, milliseconds.
    pub delay_ms_max: u64,
    /// Drop probability.
    pub loss_rate: f64,
    /// Duplication probability.
    pub duplicate_rate: f64,
    /// Bandwidth limit, kilobits per second (0: none).
    pub rate_kbit_per_s: u64,
}

impl Shaping {
    fn needs_netem(&self) -> bool {
        self.delay_ms_max > 0 || self.loss_rate > 0.0 || self.duplicate_rate > 0.0
    }

    /// The `tc qdisc replace` arguments after `root`, or `None` when nothing is shaped. A bandwidth
    /// limit alone is `tbf`; with anything else it is netem's own `rate`, since one root qdisc
    /// holds it all.
    fn qdisc_args(&self) -> Option<Vec<String>> {
        if self.needs_netem() {
            let half = self.delay_ms_max / 2;
            let mut args = vec!["netem".to_string()];
            if self.delay_ms_max > 0 {
                args.extend([
                    "delay".into(),
                    format!("{half}ms"),
                    format!("{}ms", self.delay_ms_max - half),
                ]);
            }
            if self.loss_rate > 0.0 {
                args.extend(["loss".into(), format!("{}%", self.loss_rate * 100.0)]);
            }
            if self.duplicate_rate > 0.0 {
                args.extend([
                    "duplicate".into(),
                    format!("{}%", self.duplicate_rate * 100.0),
                ]);
            }
            if self.rate_kbit_per_s > 0 {
                args.extend(["rate".into(), format!("{}kbit", self.rate_kbit_per_s)]);
            }
            return Some(args);
        }
        (self.rate_kbit_per_s > 0).then(|| {
            [
                "tbf",
                "rate",
                &format!("{}kbit", self.rate_kbit_per_s),
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ]
            .map(String::from)
            .to_vec()
        })
    }
}

/// The interface this host reaches `peer` through (`ip route get`).
pub fn interface_to(peer: IpAddr) -> Result<String, Status> {
    let out = Command::new("ip")
        .args(["-o", "route", "get", &peer.to_string()])
        .output()
        .map_err(|e| Status::failed_precondition(format!("cannot run ip: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|&w| w == "dev")
        .and_then(|_| words.next())
        .map(str::to_string)
        .ok_or_else(|| Status::internal(format!("no route to {peer}: {}", text.trim())))
}

/// Puts `shaping` on `dev`'s root (or removes what is there); returns the root qdisc as tc shows
/// it. Refuses netem where the kernel has none, in one line.
pub fn apply_shaping(dev: &str, shaping: &Shaping) -> Result<String, Status> {
    let tc = |args: &[&str]| Command::new("tc").args(args).output();
    match shaping.qdisc_args() {
        None => {
            // "No such file or directory" only means nothing was shaped.
            let _ = tc(&["qdisc", "del", "dev", dev, "root"]);
        }
        Some(args) => {
            if shaping.needs_netem() && !has_qdisc("netem") {
                return Err(Status::failed_precondition(
                    "this host's kernel has no netem qdisc: delay, loss and duplication cannot be done here",
                ));
            }
            let mut all = vec!["qdisc", "replace", "dev", dev, "root"];
            all.extend(args.iter().map(String::as_str));
            let out =
                tc(&all).map_err(|e| Status::failed_precondition(format!("cannot run tc: {e}")))?;
            if !out.status.success() {
                return Err(Status::internal(format!(
                    "tc {}: {}",
                    all.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
    }
    let shown = tc(&["qdisc", "show", "dev", dev, "root"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Ok(shown)
}

#[cfg(test)]
mod shaping_tests {
    use super::*;

    #[test]
    fn a_bandwidth_limit_alone_is_tbf_and_with_delay_it_is_netems_rate() {
        let limit = Shaping {
            rate_kbit_per_s: 512,
            ..Shaping::default()
        };
        assert_eq!(limit.qdisc_args().unwrap()[..3], ["tbf", "rate", "512kbit"]);
        let both = Shaping {
            delay_ms_max: 80,
            ..limit
        };
        assert_eq!(
            both.qdisc_args().unwrap(),
            ["netem", "delay", "40ms", "40ms", "rate", "512kbit"]
        );
        assert_eq!(Shaping::default().qdisc_args(), None);
    }
}

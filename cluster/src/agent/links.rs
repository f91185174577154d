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

//! `quorumlab machines up|status|down`: local machines that behave like VMs (systemd-nspawn,
//! each with its own systemd and SSH), and the inventory that Ansible and `run --inventory` read;
//! `quorumlab machines pki --inventory FILE`: the lab's CA and certificates for an inventory's
//! hosts (Ansible's agent role calls it; safe to repeat).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use quorumlab_cluster::inventory::Inventory;
use quorumlab_cluster::machines::{
    self, image::IMAGE_DIR_DEFAULT, Machines, UpOptions, STATE_DIR_DEFAULT,
};

/// `machines`' arguments.
#[derive(Args)]
pub struct MachinesArgs {
    #[command(subcommand)]
    action: MachinesAction,
    /// Where the machines' overlays, SSH key and inventory are kept.
    #[arg(long, global = true, default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum MachinesAction {
    /// Boot N machines (building the base image first if none is cached) and write the inventory.
    Up {
        /// How many machines.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where the base image is cached.
        #[arg(long, default_value = IMAGE_DIR_DEFAULT)]
        image_dir: PathBuf,
        /// Build the base image again even if one is cached.
        #[arg(long)]
        rebuild: bool,
        /// Print what was made, and how long it took, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show each machine: running, answering SSH.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop every machine and remove all that `up` made (safe to repeat).
    Down,
    /// Make the lab's CA, the driver's certificate, a certificate per inventory host and the
    /// agent token in the inventory's `quorumlab_pki_dir` (what exists is kept).
    Pki {
        /// The inventory whose hosts get certificates.
        #[arg(long)]
        inventory: PathBuf,
    },
}

/// Runs one `machines` action.
pub fn command(args: MachinesArgs) -> Result<()> {
    let state_dir = args.state_dir;
    match args.action {
        MachinesAction::Up {
            nodes,
            image_dir,
            rebuild,
            json,
        } => {
            let options = UpOptions {
                machines: nodes,
                state_dir,
                image_dir,
                rebuild,
            };
            up(&options, json)
        }
        MachinesAction::Status { json } => status(&state_dir, json),
        MachinesAction::Down => {
            if machines::down(&state_dir)? {
                println!("machines down; nothing of them is left");
            } else {
                println!("no machines were up in {}", state_dir.display());
            }
            Ok(())
        }
        MachinesAction::Pki { inventory } => pki(&inventory),
    }
}

fn up(options: &UpOptions, json: bool) -> Result<()> {
    let (set, times) = machines::up(options)?;
    let inventory = Machines::inventory_path(&options.state_dir);
    if json {
        let out = serde_json::json!({
            "machines": set.net.machines,
            "subnet": format!("10.78.{}.0/24", set.net.id),
            "inventory": inventory,
            "image_s": times.image_s,
            "boot_to_ssh_s": times.boot_to_ssh_s,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} machines answer SSH ({:.1} s from boot); inventory: {}",
        set.net.machines,
        times.boot_to_ssh_s,
        inventory.display()
    );
    for node in set.nodes() {
        println!(
            "  {node}  {}  ({})",
            set.net.addr(node),
            set.net.machine(node)
        );
    }
    println!(
        "next: ansible-playbook -i {} ansible/site.yml",
        inventory.display()
    );
    Ok(())
}

fn status(state_dir: &std::path::Path, json: bool) -> Result<()> {
    let machines = machines::status(state_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&machines)?);
        return Ok(());
    }
    println!(
        "{:<4} {:<12} {:<14} {:<8} ssh",
        "node", "machine", "address", "running"
    );
    for m in machines {
        println!(
            "{:<4} {:<12} {:<14} {:<8} {}",
            m.name, m.machine, m.addr, m.running, m.ssh
        );
    }
    Ok(())
}

fn pki(inventory: &std::path::Path) -> Result<()> {
    let inventory = Inventory::load(inventory)?;
    if inventory.hosts.is_empty() {
        bail!(
            "inventory {}: no hosts under all.hosts",
            inventory.path.display()
        );
    }
    let hosts: Vec<_> = inventory
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.addr))
        .collect();
    let issued = quorumlab_cluster::pki::ensure(&inventory.pki_dir, &hosts)?;
    // The agent role reads "new: 0," to tell Ansible nothing changed.
    println!(
        "pki in {}: new: {issued}, {} hosts have certificates",
        inventory.pki_dir.display(),
        hosts.len()
    );
    Ok(())
}

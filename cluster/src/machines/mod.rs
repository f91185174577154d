//! Machines that behave like VMs on one host: systemd-nspawn containers, each with its own root
//! filesystem (an overlay on one cached base image), its own systemd as PID 1, hostname,
//! machine-id, SSH host keys and address on a bridge, reached over real SSH.
//!
//! `up` builds (or reuses) the image, records everything in `STATE_DIR/machines.json` *before* it
//! is made (so `down` can always undo it), boots the machines, waits until each answers SSH with
//! the host key it was given, and writes the inventory that both Ansible and `run --inventory`
//! read. `down` stops every machine by PID, unmounts, removes the bridge and the NAT table, and
//! sets forwarding back: afterwards nothing of the set is left on the host.

pub mod image;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quorumlab_experiment::node::NodeId;
use serde::{Deserialize, Serialize};

use crate::hosts::is_root;
use crate::inventory::AGENT_PORT_DEFAULT;
pub use net::MachineNet;

/// Where `machines up` keeps its state unless told otherwise.
pub const STATE_DIR_DEFAULT: &str = "/var/lib/quorumlab/machines";
/// Most machines one set may have.
pub const MACHINES_MAX: usize = 9;
/// Where nspawn keeps its runtime files; it must be a tmpfs, which `/run` is not on every host.
const NSPAWN_RUN: &str = "/run/systemd/nspawn";

/// Why a machines operation failed; one line each.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Not root.
    #[error("machines need root (mounts, bridges, nftables, systemd-nspawn)")]
    NotRoot,
    /// A program is missing.
    #[error("{0}")]
    Missing(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// The last lines it printed.
        stderr: String,
    },
    /// The base image could not be built.
    #[error("image: {0}")]
    Image(String),
    /// Files in the state directory.
    #[error("{path}: {reason}")]
    State {
        /// The path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The request cannot be met.
    #[error("{0}")]
    Refused(String),
    /// A machine did not come up in time.
    #[error("{0}")]
    Timeout(String),
}

impl MachineError {
    pub(crate) fn state(path: &Path, e: impl std::fmt::Display) -> MachineError {
        MachineError::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Runs a command to completion; its failure is one line with the last of what it printed.
pub(crate) fn run_command(command: &mut Command) -> Result<(), MachineError> {
    let shown = format!("{command:?}").replace('"', "");
    let out = command.output().map_err(|e| MachineError::Command {
        command: shown.clone(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(2)
        .collect();
    Err(MachineError::Command {
        command: shown,
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
    })
}

/// What `up` asks for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How many machines (1..=MACHINES_MAX).
    pub machines: usize,
    /// Where the state, overlays, keys and inventory go.
    pub state_dir: PathBuf,
    /// Where the base image is cached.
    pub image_dir: PathBuf,
    /// Build the image again even if one is cached.
    pub rebuild: bool,
}

/// What `machines.json` records about a set of machines that is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machines {
    /// The network.
    pub net: MachineNet,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The base image every overlay lies on.
    pub image_dir: PathBuf,
    /// Whether `up` mounted the tmpfs on nspawn's runtime directory (and `down` unmounts it).
    pub mounted_nspawn_run: bool,
    /// Overlay root filesystems mounted so far, per machine.
    pub mounted: Vec<PathBuf>,
    /// systemd-nspawn process ids, per machine.
    pub pids: Vec<u32>,
}

/// Timings `up` measured, for the figures.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct UpTimes {
    /// Building the image (0 when the cached one was used).
    pub image_s: f64,
    /// From the first boot to every machine answering SSH.
    pub boot_to_ssh_s: f64,
}

/// One machine as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineStatus {
    /// Its name in the inventory (`n1`).
    pub name: String,
    /// Its nspawn machine name.
    pub machine: String,
    /// Its address.
    pub addr: String,
    /// Whether its nspawn process runs.
    pub running: bool,
    /// Whether it answered SSH just now.
    pub ssh: bool,
}

impl Machines {
    fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("machines.json")
    }

    /// The set recorded in `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Option<Machines>, MachineError> {
        let file = Machines::file(state_dir);
        let Ok(text) = std::fs::read_to_string(&file) else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| MachineError::state(&file, e))
    }

    fn save(&self) -> Result<(), MachineError> {
        let file = Machines::file(&self.state_dir);
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serialises"))
            .map_err(|e| MachineError::state(&tmp, e))?;
        std::fs::rename(&tmp, &file).map_err(|e| MachineError::state(&file, e))
    }

    /// The inventory file `up` wrote.
    pub fn inventory_path(state_dir: &Path) -> PathBuf {
        state_dir.join("inventory.yml")
    }

    /// The SSH key the inventory names.
    pub fn ssh_key(state_dir: &Path) -> PathBuf {
        state_dir.join("ssh").join("id_ed25519")
    }

    fn known_hosts(state_dir: &Path) -> PathBuf {
        state_dir.join("ssh").join("known_hosts")
    }

    fn machine_dir(&self, node: NodeId) -> PathBuf {
        self.state_dir.join(node.to_string())
    }

    /// Every machine, `n1` first.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> {
        NodeId::all(self.net.machines)
    }
}

/// Brings a set of machines up; on failure, whatever was made is taken down again.
pub fn up(options: &UpOptions) -> Result<(Machines, UpTimes), MachineError> {
    if !is_root() {
        return Err(MachineError::NotRoot);
    }
    if !(1..=MACHINES_MAX).contains(&options.machines) {
        return Err(MachineError::Refused(format!(
            "--nodes must be 1 to {MACHINES_MAX}, not {}",
            options.machines
        )));
    }
    if Machines::load(&options.state_dir)?.is_some() {
        return Err(MachineError::Refused(format!(
            "machines are already up in {}; run `quorumlab machines down` first",
            options.state_dir.display()
        )));
    }
    let _up = tracing::info_span!("machines_up", machines = options.machines).entered();
    let started = Instant::now();
    image::ensure(&options.image_dir, options.rebuild)?;
    let image_s = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&options.state_dir)
        .map_err(|e| MachineError::state(&options.state_dir, e))?;
    let id = (1..=250u8)
        .find(|&id| !MachineNet::exists(id))
        .ok_or_else(|| MachineError::Refused("no free machine set id (250 sets are up)".into()))?;
    let mut set = Machines {
        net: MachineNet {
            id,
            machines: options.machines,
            forward_before: MachineNet::forward_now(),
        },
        state_dir: options.state_dir.clone(),
        image_dir: options.image_dir.clone(),
        mounted_nspawn_run: false,
        mounted: vec![],
        pids: vec![],
    };
    set.save()?;
    let booted = boot_all(&mut set);
    if let Err(e) = &booted {
        tracing::error!(error = %e, "machines did not come up; taking down what was made");
        let _ = down(&options.state_dir);
    }
    let boot_to_ssh_s = booted?;
    Ok((
        set,
        UpTimes {
            image_s,
            boot_to_ssh_s,
        },
    ))
}

/// Makes the network, prepares and boots every machine, waits for SSH, writes the inventory.
fn boot_all(set: &mut Machines) -> Result<f64, MachineError> {
    set.net.create()?;
    tracing::info!(bridge = %set.net.bridge(), subnet = %format!("10.78.{}.0/24", set.net.id), "network made");
    if !is_mountpoint(Path::new(NSPAWN_RUN)) {
        std::fs::create_dir_all(NSPAWN_RUN)
            .map_err(|e| MachineError::state(Path::new(NSPAWN_RUN), e))?;
        run_command(Command::new("mount").args(["-t", "tmpfs", "tmpfs", NSPAWN_RUN]))?;
        set.mounted_nspawn_run = true;
        set.save()?;
    }
    let key = Machines::ssh_key(&set.state_dir);
    make_ssh_key(&key)?;
    let mut known_hosts = String::new();
    for node in set.nodes().collect::<Vec<_>>() {
        let root = mount_overlay(set, node)?;
        known_hosts += &prepare_root(set, node, &root, &key)?;
    }
    let known = Machines::known_hosts(&set.state_dir);
    std::fs::write(&known, known_hosts).map_err(|e| MachineError::state(&known, e))?;
    let started = Instant::now();
    for node in set.nodes().collect::<Vec<_>>() {
        let pid = boot(set, node)?;
        tracing::info!(node = %node, machine = %set.net.machine(node), pid, "machine booting");
        set.pids.push(pid);
        set.save()?;
    }
    for node in set.nodes() {
        wait_for_ssh(set, node, Duration::from_secs(60))?;
        tracing::info!(
            node = %node,
            addr = %set.net.addr(node),
            since_boot_ms = started.elapsed().as_millis() as u64,
            "machine answers SSH"
        );
    }
    let boot_to_ssh_s = started.elapsed().as_secs_f64();
    write_inventory(set)?;
    tracing::info!(inventory = %Machines::inventory_path(&set.state_dir).display(), "inventory written");
    Ok(boot_to_ssh_s)
}

fn is_mountpoint(path: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

fn make_ssh_key(key: &Path) -> Result<(), MachineError> {
    let dir = key.parent().expect("key has a directory");
    std::fs::create_dir_all(dir).map_err(|e| MachineError::state(dir, e))?;
    if key.exists() {
        return Ok(());
    }
    run_command(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "quorumlab-machines",
                "-f",
            ])
            .arg(key),
    )
}

/// Mounts `node`'s overlay (recorded first) and returns its root.
fn mount_overlay(set: &mut Machines, node: NodeId) -> Result<PathBuf, MachineError> {
    let dir = set.machine_dir(node);
    let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
    for d in [&upper, &work, &root] {
        std::fs::create_dir_all(d).map_err(|e| MachineError::state(d, e))?;
    }
    set.mounted.push(root.clone());
    set.save()?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        set.image_dir.display(),
        upper.display(),
        work.display()
    );
    run_command(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&root),
    )?;
    Ok(root)
}

/// Gives `node` its identity: hostname, address, SSH host keys of its own, the driver's key and
/// the host's resolver. Returns its `known_hosts` lines.
fn prepare_root(
    set: &Machines,
    node: NodeId,
    root: &Path,
    key: &Path,
) -> Result<String, MachineError> {
    let write = |rel: &str, text: String| {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| MachineError::state(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| MachineError::state(&path, e))
    };
    write("etc/hostname", format!("{node}\n"))?;
    write(
        "etc/hosts",
        format!("127.0.0.1 localhost\n127.0.1.1 {node}\n"),
    )?;
    // An `80-` name would lose to the `80-container-host0.network` that systemd ships.
    write(
        "etc/systemd/network/10-host0.network",
        format!(
            "[Match]\nName=host0\n\n[Network]\nAddress={}/24\nGateway={}\n",
            set.net.addr(node),
            set.net.gateway()
        ),
    )?;
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .map_err(|e| MachineError::state(key, e))?;
    write("root/.ssh/authorized_keys", public)?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    write("etc/resolv.conf", resolv)?;
    run_command(Command::new("ssh-keygen").arg("-A").arg("-f").arg(root))?;
    let host_key = root.join("etc/ssh/ssh_host_ed25519_key.pub");
    let host_key =
        std::fs::read_to_string(&host_key).map_err(|e| MachineError::state(&host_key, e))?;
    let mut fields = host_key.split_whitespace();
    let (kind, body) = (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    );
    Ok(format!("{} {kind} {body}\n", set.net.addr(node)))
}

/// Boots `node` under systemd-nspawn and returns its pid; the console goes to `console.log`.
fn boot(set: &Machines, node: NodeId) -> Result<u32, MachineError> {
    let dir = set.machine_dir(node);
    let log =
        std::fs::File::create(dir.join("console.log")).map_err(|e| MachineError::state(&dir, e))?;
    let err_log = log.try_clone().map_err(|e| MachineError::state(&dir, e))?;
    use std::os::unix::process::CommandExt;
    // No systemd or D-Bus on this host: --register=no and --keep-unit keep nspawn from asking
    // machined for a scope.
    let child = Command::new("systemd-nspawn")
        .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
        .arg(format!("--machine={}", set.net.machine(node)))
        .arg(format!("--network-bridge={}", set.net.bridge()))
        .arg("-D")
        .arg(dir.join("root"))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|e| MachineError::state(Path::new("systemd-nspawn"), e))?;
    Ok(child.id())
}

/// The ssh command for `node`, with the set's key and known hosts (strict host key checking).
pub fn ssh(state_dir: &Path, addr: &str) -> Command {
    let mut command = Command::new("ssh");
    command
        .arg("-i")
        .arg(Machines::ssh_key(state_dir))
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            Machines::known_hosts(state_dir).display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=2",
            "-o",
            "LogLevel=error",
        ])
        .arg(format!("root@{addr}"));
    command
}

fn wait_for_ssh(set: &Machines, node: NodeId, limit: Duration) -> Result<(), MachineError> {
    let deadline = Instant::now() + limit;
    let addr = set.net.addr(node).to_string();
    loop {
        let answered = ssh(&set.state_dir, &addr)
            .arg("true")
            .output()
            .is_ok_and(|o| o.status.success());
        if answered {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(MachineError::Timeout(format!(
                "machine {node} ({addr}) did not answer SSH within {limit:?}; see {}",
                set.machine_dir(node).join("console.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the inventory: every machine in every group the lab runs here (etcd, Patroni's
/// Postgres, a Postgres shard; MongoDB's group stays empty: no mongod can be had on these
/// machines).
fn write_inventory(set: &Machines) -> Result<(), MachineError> {
    let key = Machines::ssh_key(&set.state_dir);
    let known = Machines::known_hosts(&set.state_dir);
    let mut text = format!(
        "# Written by `quorumlab machines up`: read by ansible-playbook and by `quorumlab run --inventory`.\nall:\n  vars:\n    ansible_user: root\n    ansible_ssh_private_key_file: {}\n    ansible_ssh_common_args: \"-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes\"\n    ansible_python_interpreter: /usr/bin/python3\n    quorumlab_agent_port: {AGENT_PORT_DEFAULT}\n    quorumlab_pki_dir: pki\n    quorumlab_driver_cidr: {}/32\n  hosts:\n",
        key.display(),
        known.display(),
        set.net.gateway()
    );
    for node in set.nodes() {
        text += &format!("    {node}: {{ ansible_host: {} }}\n", set.net.addr(node));
    }
    let members: Vec<String> = set.nodes().map(|n| format!("{n}: {{}}")).collect();
    let members = members.join(", ");
    text += &format!(
        "  children:\n    etcd:\n      hosts: {{ {members} }}\n    postgres:\n      hosts: {{ {members} }}\n    shards:\n      hosts: {{ {members} }}\n    service:\n      hosts: {{ n1: {{}} }}\n    mongodb:\n      hosts: {{}}\n"
    );
    let path = Machines::inventory_path(&set.state_dir);
    std::fs::write(&path, text).map_err(|e| MachineError::state(&path, e))
}

/// Each machine's state now.
pub fn status(state_dir: &Path) -> Result<Vec<MachineStatus>, MachineError> {
    let Some(set) = Machines::load(state_dir)? else {
        return Err(MachineError::Refused(format!(
            "no machines are up in {} (`quorumlab machines up` starts them)",
            state_dir.display()
        )));
    };
    Ok(set
        .nodes()
        .map(|node| {
            let addr = set.net.addr(node).to_string();
            let running = set.pids.get(node.index()).is_some_and(|&pid| alive(pid));
            let ssh = running
                && ssh(state_dir, &addr)
                    .arg("true")
                    .output()
                    .is_ok_and(|o| o.status.success());
            MachineStatus {
                name: node.to_string(),
                machine: set.net.machine(node),
                addr,
                running,
                ssh,
            }
        })
        .collect())
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill(pid, 0) only asks whether the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Stops every machine of the set in `state_dir` and removes all it made. Returns whether there
/// was anything to stop.
pub fn down(state_dir: &Path) -> Result<bool, MachineError> {
    let Some(set) = Machines::load(state_dir)? else {
        return Ok(false);
    };
    let _down = tracing::info_span!("machines_down", machines = set.pids.len()).entered();
    // SIGTERM asks nspawn to shut the machine's systemd down cleanly; SIGKILL after 15 s.
    for &pid in &set.pids {
        // SAFETY: kill(2) on a pid this set recorded; a stale pid only yields ESRCH.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while set.pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in set.pids.iter().filter(|&&pid| alive(pid)) {
        tracing::warn!(pid, "machine did not shut down within 15 s; killed");
        // SAFETY: as above.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    }
    reap(&set.pids);
    for root in &set.mounted {
        if is_mountpoint(root) {
            run_command(Command::new("umount").arg(root))?;
        }
    }
    if set.mounted_nspawn_run && is_mountpoint(Path::new(NSPAWN_RUN)) {
        let _ = run_command(Command::new("umount").arg(NSPAWN_RUN));
    }
    set.net.destroy();
    std::fs::remove_dir_all(state_dir).map_err(|e| MachineError::state(state_dir, e))?;
    tracing::info!(state_dir = %state_dir.display(), "machines stopped and removed");
    Ok(true)
}

/// Waits for the machines' processes if they are our children (a `down` in the same process as
/// `up`, as in tests), so no zombie is left.
fn reap(pids: &[u32]) {
    for &pid in pids {
        let mut status = 0;
        // SAFETY: waitpid on a pid we recorded; ECHILD (not our child) is harmless.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    }
}

//! Services that systemd runs on the host (machines and VMs provisioned by Ansible): the agent
//! signals them through `systemctl`.
//!
//! Only the unit's main process is signalled (see [`kill`] for why), and a kill reaches the
//! unit's other processes through their pid files, as on namespace hosts.
//!
//! The lab's units are installed with `Restart=no` (see `ansible/roles/*/tasks`): a killed
//! member stays down until the scenario restarts it, as in the simulator.

use std::process::Command;

use std::path::PathBuf;

use quorumlab_proto::agent::Action;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// A service systemd runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// The unit (`patroni.service`).
    pub unit: String,
    /// Processes of the unit that a kill must reach when systemd can signal only its main
    /// process (Patroni's postmaster), named by their pid files.
    #[serde(default)]
    pub pid_files: Vec<PathBuf>,
}

fn systemctl(args: &[&str]) -> Result<String, Status> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| Status::failed_precondition(format!("cannot run systemctl: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Status::internal(format!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Sends `signal` to the unit's main process. Why not all of them: systemd-nspawn machines on a
/// host whose PID 1 is not systemd have no cgroup tree, and there `--kill-whom=all` signals the
/// main process and then fails; the pid files reach the rest, the same way everywhere.
fn kill(unit: &str, signal: &str) -> Result<String, Status> {
    systemctl(&[
        "kill",
        "--kill-whom=main",
        &format!("--signal={signal}"),
        unit,
    ])
}

/// Carries out `action` on the unit.
pub fn signal(spec: &UnitSpec, action: Action) -> Result<(), Status> {
    let unit = spec.unit.as_str();
    match action {
        Action::Unspecified => return Err(Status::invalid_argument("action is required")),
        Action::Start => systemctl(&["start", unit])?,
        Action::Stop => systemctl(&["stop", unit])?,
        Action::Kill => {
            kill(unit, "SIGKILL")?;
            for pid in super::detached_pids(&spec.pid_files) {
                super::kill_detached(pid);
            }
            // The unit then fails (its main process died of a signal); clear that, so the next
            // start is an ordinary one.
            let _ = systemctl(&["reset-failed", unit]);
            String::new()
        }
        Action::Pause => kill(unit, "SIGSTOP")?,
        Action::Resume => kill(unit, "SIGCONT")?,
    };
    Ok(())
}

/// The unit's main pid (0 when it is not running).
pub fn main_pid(unit: &str) -> Result<u32, Status> {
    let out = systemctl(&["show", "--property=MainPID", "--value", unit])?;
    Ok(out.trim().parse().unwrap_or(0))
}

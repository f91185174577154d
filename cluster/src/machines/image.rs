//! The machines' base image: a Debian root filesystem with systemd, SSH and the lab's packages,
//! built once by `debootstrap` and shared read-only by every machine (each boots an overlay on it).
//!
//! Building takes a few minutes, so it is cached in a directory of its own and reused until
//! `--rebuild`; a half-built image never counts, because it is built under a `.tmp` name and
//! renamed into place only when complete. Packages come from the mirror the host's own apt uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{run_command, MachineError};

/// Where the image lives unless told otherwise.
pub const IMAGE_DIR_DEFAULT: &str = "/var/cache/quorumlab/images/bookworm-lab";

/// Bumped whenever what an image holds changes, so an older cached image is rebuilt.
const IMAGE_VERSION: &str = "2";

/// What debootstrap installs: an init, SSH, and what Ansible's modules need on the machine.
const BASE_PACKAGES: &str = "systemd-sysv,udev,dbus,openssh-server,iproute2,python3,python3-apt,sudo,ca-certificates,netbase,procps";

/// The lab's programs, baked into a layer so provisioning does not download them on every
/// machine (the playbook still declares them, for VMs that start bare).
const LAB_PACKAGES: &[&str] = &[
    "etcd-server",
    "postgresql-15",
    "patroni",
    "python3-etcd",
    "nftables",
];

/// Services the packages enable at install that the lab starts only once configured.
const DISABLED_UNITS: &[&str] = &["etcd", "patroni", "postgresql"];

fn marker(dir: &Path) -> PathBuf {
    dir.join(".quorumlab-image")
}

/// Whether a complete image of the current version is at `dir`.
pub fn is_built(dir: &Path) -> bool {
    std::fs::read_to_string(marker(dir)).is_ok_and(|v| v.trim() == IMAGE_VERSION)
}

/// The first Debian mirror the host's apt sources name (deb822 `URIs:` or a `deb` line).
fn host_mirror() -> Result<String, MachineError> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri.filter(|u| !u.contains("security")) {
                return Ok(uri.to_string());
            }
        }
    }
    Err(MachineError::Image(
        "the host's apt sources name no Debian mirror to build the image from".into(),
    ))
}

/// Builds the image at `dir` unless a complete one is there (or `rebuild`); returns whether it
/// built one. Logs each step and its time.
pub fn ensure(dir: &Path, rebuild: bool) -> Result<bool, MachineError> {
    if is_built(dir) && !rebuild {
        tracing::info!(image_dir = %dir.display(), "base image cached");
        return Ok(false);
    }
    for program in ["/usr/sbin/debootstrap", "/usr/bin/systemd-nspawn"] {
        if !Path::new(program).exists() {
            return Err(MachineError::Missing(format!(
                "{program} is missing: apt-get install debootstrap systemd-container (cargo xtask test does it)"
            )));
        }
    }
    let mirror = host_mirror()?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| MachineError::state(&tmp, e))?;
    let started = Instant::now();
    tracing::info!(
        image_dir = %dir.display(),
        "building the base image (debootstrap, a few minutes)"
    );
    run_command(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={BASE_PACKAGES}"),
                "bookworm",
            ])
            .arg(&tmp)
            .arg(&mirror),
    )?;
    tracing::info!(
        elapsed_s = started.elapsed().as_secs(),
        "base system made; adding the lab's packages"
    );
    add_lab_layer(&tmp)?;
    make_generic(&tmp)?;
    std::fs::write(marker(&tmp), IMAGE_VERSION).map_err(|e| MachineError::state(&tmp, e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| MachineError::state(dir, e))?;
    tracing::info!(elapsed_s = started.elapsed().as_secs(), "base image ready");
    Ok(true)
}

/// Installs the lab's packages inside the image, with services kept from starting in the chroot
/// and Debian's default Postgres cluster not created (Patroni makes its own).
fn add_lab_layer(root: &Path) -> Result<(), MachineError> {
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| MachineError::state(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| MachineError::state(&path, e))
    };
    write("usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n")?;
    use std::os::unix::fs::PermissionsExt;
    let policy = root.join("usr/sbin/policy-rc.d");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| MachineError::state(&policy, e))?;
    write(
        "etc/postgresql-common/createcluster.conf",
        "create_main_cluster = false\n",
    )?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .map_err(|e| MachineError::state(Path::new("/etc/resolv.conf"), e))?;
    let install = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {} && apt-get clean",
        LAB_PACKAGES.join(" ")
    );
    run_command(
        Command::new("chroot")
            .arg(root)
            .args(["/bin/sh", "-c", &install]),
    )?;
    std::fs::remove_file(&policy).map_err(|e| MachineError::state(&policy, e))
}

/// Removes what must differ per machine (host keys, machine-id: made at each machine's first
/// boot or by `up`), and sets which units start at boot.
fn make_generic(root: &Path) -> Result<(), MachineError> {
    let ssh = root.join("etc/ssh");
    for entry in std::fs::read_dir(&ssh).map_err(|e| MachineError::state(&ssh, e))? {
        let path = entry.map_err(|e| MachineError::state(&ssh, e))?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ssh_host_"))
        {
            std::fs::remove_file(&path).map_err(|e| MachineError::state(&path, e))?;
        }
    }
    let machine_id = root.join("etc/machine-id");
    std::fs::write(&machine_id, "").map_err(|e| MachineError::state(&machine_id, e))?;
    run_command(Command::new("chroot").arg(root).args([
        "systemctl",
        "enable",
        "systemd-networkd",
    ]))?;
    let mut disable = Command::new("chroot");
    disable
        .arg(root)
        .args(["systemctl", "disable"])
        .args(DISABLED_UNITS);
    run_command(&mut disable)
}

//! What a real lab needs on this machine before it starts: its Debian packages (installed when
//! missing and we are root, as `cargo xtask test` does), this binary (the agents run it), and a
//! state directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Default directory for a local lab's state (data dirs, logs, PIDs).
pub const STATE_DIR_DEFAULT: &str = "/tmp/quorumlab-lab";

/// A Debian package and the file that shows it is installed.
pub type Package = (&'static str, &'static str);

/// The quorumlab binary itself, which every host's agent runs.
pub fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the quorumlab binary for the agents")
}

/// Installs the packages whose file is missing, with apt-get, when we are root; otherwise leaves
/// it to the lab, whose own check names what is missing.
pub fn install_if_missing(packages: &[Package]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() || !quorumlab_cluster::hosts::is_root() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get", missing.join(", "));
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    for args in [&["update", "-qq"][..], &install[..]] {
        let status = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed; install {} by hand",
                args.join(" "),
                missing.join(" ")
            );
        }
    }
    Ok(())
}

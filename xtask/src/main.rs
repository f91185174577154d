//! Project automation, the `cargo xtask` way: plain Rust instead of shell scripts.
//!
//! - `cargo xtask demo`: install what is missing, then run the simulator demo.
//! - `cargo xtask test`: install what is missing, then run every check and test (what CI runs),
//!   ending with one line that counts the tests that skipped and says why. Under
//!   `QUORUMLAB_REQUIRE_REAL=1` (CI) a test that would skip for want of root, etcd or Postgres
//!   fails instead; only the MongoDB tests may skip (no server can be installed here).
//!
//! "What is missing" is a fixed list of Debian packages, each checked by a file it installs, and
//! for `test` a virtualenv with pinned Ansible and ansible-lint from PyPI (`ensure_ansible`);
//! nothing is installed twice, so both commands are safe to repeat.

use std::env;
use std::process::{exit, Command};

/// Debian packages the workspace needs, each with the file that shows it is installed.
/// `protoc` and the well-known `.proto` files are needed by the build scripts of the gRPC crates
/// (`etcd-client`, the node agent); etcd, Postgres 15 and Patroni are what the real-cluster tests
/// run; nftables cuts the lab's links; systemd-nspawn, debootstrap and SSH make and reach the
/// machines, e2fsprogs makes the power-cut test's filesystem, python3-venv holds Ansible (from PyPI, see
/// `ensure_ansible`), and librocksdb-dev with libclang-dev build the storage-engine experiment.
const PACKAGES: &[(&str, &str)] = &[
    ("protobuf-compiler", "/usr/bin/protoc"),
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    ("etcd-server", "/usr/bin/etcd"),
    ("iproute2", "/usr/sbin/ip"),
    ("postgresql-15", "/usr/lib/postgresql/15/bin/postgres"),
    ("patroni", "/usr/bin/patroni"),
    ("nftables", "/usr/sbin/nft"),
    ("systemd-container", "/usr/bin/systemd-nspawn"),
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("openssh-client", "/usr/bin/ssh"),
    // mkfs.ext4: `kv power-cut` puts its store on an ext4 filesystem on a loop device.
    ("e2fsprogs", "/usr/sbin/mkfs.ext4"),
    // A metapackage: its doc directory is the one file it installs itself.
    ("python3-venv", "/usr/share/doc/python3-venv"),
    // `engines` links RocksDB 7.8 from Debian rather than building its C++ in every clean build
    // (ROCKSDB_LIB_DIR in .cargo/config.toml); bindgen reads the crate's C header with libclang.
    ("librocksdb-dev", "/usr/include/rocksdb/c.h"),
    ("libclang-dev", "/usr/share/doc/libclang-dev"),
];

fn main() {
    let task = env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "demo" => ensure_packages().and_then(|()| {
            cargo(&[
                "run",
                "--release",
                "--quiet",
                "--bin",
                "quorumlab",
                "--",
                "demo",
            ])
        }),
        "test" => ensure_packages().and_then(|()| test()),
        _ => {
            eprintln!("usage: cargo xtask <demo|test>\n  demo  install what is missing, run the simulator demo\n  test  install what is missing, run formatting, lints and every test");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

/// Ansible and ansible-lint from PyPI, pinned, in a virtualenv of the workspace's own (Debian's
/// Ansible is older, and Galaxy is not reachable: the `ansible` package bundles the collections
/// the roles use).
const ANSIBLE_PINS: &[&str] = &["ansible==12.3.0", "ansible-lint==26.10.1"];

/// The virtualenv's directory, under the workspace's `target/`.
fn ansible_venv() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    root.join("target").join("ansible-venv")
}

/// Creates the virtualenv and installs the pinned versions unless they are there already.
fn ensure_ansible() -> Result<std::path::PathBuf, String> {
    let venv = ansible_venv();
    let stamp = venv.join(".quorumlab-pins");
    let wanted = ANSIBLE_PINS.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(venv.join("bin"));
    }
    eprintln!("xtask: installing {wanted} into {}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(ANSIBLE_PINS))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(venv.join("bin"))
}

fn test() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    let ansible_bin = ensure_ansible()?;
    let ansible_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible");
    // ansible-lint's production profile; it reads ansible.cfg and the roles beside site.yml.
    run(Command::new(ansible_bin.join("ansible-lint"))
        .args(["--profile", "production", "--offline", "site.yml"])
        .current_dir(&ansible_dir)
        .env("PATH", path_with(&ansible_bin)))?;
    // Lint in the profile the tests are built in: build scripts (aws-lc's C build among them)
    // and proc macros are then compiled once for both steps instead of once each.
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ])?;
    let skip_log = env::temp_dir().join(format!("quorumlab-skips-{}.tsv", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo_bin);
    command
        .args(["test", "--workspace", "--release"])
        .env("QUORUMLAB_SKIP_LOG", &skip_log)
        .env("QUORUMLAB_ANSIBLE_BIN", &ansible_bin);
    let tested = run(&mut command);
    eprintln!("{}", skip_summary(&skip_log));
    let _ = std::fs::remove_file(&skip_log);
    tested
}

/// The closing line: how many tests skipped, grouped by why (from the log the tests append to).
fn skip_summary(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by_reason: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in text.lines() {
        let why = line.split_once('\t').map_or(line, |(_, why)| why);
        *by_reason.entry(why).or_default() += 1;
    }
    let total: usize = by_reason.values().sum();
    if total == 0 {
        return "skipped: 0 tests".to_string();
    }
    let reasons: Vec<String> = by_reason
        .iter()
        .map(|(why, n)| format!("{n} because {why}"))
        .collect();
    let tests = if total == 1 { "test" } else { "tests" };
    format!("skipped: {total} {tests} ({})", reasons.join("; "))
}

/// `PATH` with `dir` first.
fn path_with(dir: &std::path::Path) -> String {
    format!("{}:{}", dir.display(), env::var("PATH").unwrap_or_default())
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("xtask: {shown}");
    let status = command
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the missing packages with apt-get (as root, or through sudo).
fn ensure_packages() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !std::path::Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let prefix: Vec<&str> = if is_root {
        vec![]
    } else if has_command("sudo") {
        vec!["sudo", "-n"]
    } else {
        return Err(format!(
            "missing packages {missing:?}; install them as root: apt-get install -y {}",
            missing.join(" ")
        ));
    };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = prefix.clone();
        all.push("apt-get");
        all.extend(args);
        let mut command = Command::new(all[0]);
        command
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command)
    };
    eprintln!("xtask: installing missing packages: {}", missing.join(" "));
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

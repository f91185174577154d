//! `quorumlab kv power-cut`: the loss a SIGKILL cannot show. A killed process leaves what it
//! wrote in the kernel's page cache, and the kernel writes it out later; a power cut takes the
//! page cache with it. This machine has no power switch to pull (no VM to reset, no
//! device-mapper), so the store lives on a real ext4 filesystem in an image file mounted through
//! a loop device, and a power cut is taken at the block device: the writer is killed, the image
//! is copied as the loop device holds it at that instant (what ext4 had handed down, by fsync or
//! its own writeback), and the live filesystem, with its page cache, is thrown away. The copy is
//! mounted (ext4 replays its journal, as after a reboot), the store recovered and checked, and
//! the copy is the disk of the next life.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quorumlab_kv::record::Stop;
use quorumlab_kv::{Fsync, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{one_life, CrashPlan};
use crate::cmd::SafetyViolation;
use crate::runtime::progress;

/// Size of the filesystem image: small, so that copying it at the cut takes milliseconds.
const IMAGE_MIB: u64 = 64;

/// An ext4 filesystem in an image file, mounted through a loop device (unmounted on drop).
struct Ext4Disk {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl Ext4Disk {
    /// A fresh filesystem of `IMAGE_MIB` in `dir`/disk.img, mounted on `dir`/mnt.
    fn make(dir: &Path) -> Result<Ext4Disk> {
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount)?;
        std::fs::File::create(&image)?.set_len(IMAGE_MIB << 20)?;
        // Lazy initialisation off: no background writes of ext4's own to race the cut's copy.
        run(Command::new(sbin("mkfs.ext4")?)
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image))?;
        let mut disk = Ext4Disk {
            image,
            mount,
            mounted: false,
        };
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&mut self) -> Result<()> {
        // ext4's defaults: a journal commit every 5 s, dirty data written back after 30 s.
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.mount))?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<()> {
        run(Command::new("umount").arg(&self.mount))?;
        self.mounted = false;
        Ok(())
    }

    /// Syncs the whole filesystem (the store's creation is made durable before the first life).
    fn sync(&self) -> Result<()> {
        let dir = std::fs::File::open(&self.mount)?;
        // SAFETY: syncfs on a descriptor we own, open for the call's duration.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(std::io::Error::last_os_error()).context("syncfs");
        }
        Ok(())
    }

    /// The power cut and the reboot: the disk keeps what had reached the block device, the
    /// page cache is lost, and the filesystem comes back from the disk (its journal replayed).
    fn cut_power(&mut self) -> Result<()> {
        let cut = self.image.with_extension("cut");
        std::fs::copy(&self.image, &cut).context("copying the block device at the cut")?;
        // Unmounting writes the page cache out, into the image the reboot does not use.
        self.unmount()?;
        std::fs::rename(&cut, &self.image)?;
        self.mount()
    }
}

impl Drop for Ext4Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
    }
}

/// The path of a system program that may not be on a user's PATH (`/usr/sbin`, `/sbin`).
fn sbin(program: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.exists())
        .with_context(|| format!("{program} is not installed (apt-get install e2fsprogs)"))
}

fn run(command: &mut Command) -> Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What the power cuts found.
#[derive(Default)]
struct CutTally {
    cuts: u64,
    acked: u64,
    lost: Vec<u64>,
    cuts_that_lost: u64,
    torn_tails: u64,
    cut_ms_max: f64,
}

/// `kv power-cut`: `plan.kills` lives of a writer on the ext4 disk, each ended by a power cut.
pub(super) fn power_cut(dir: Option<PathBuf>, plan: &CrashPlan, json: bool) -> Result<()> {
    if !quorumlab_cluster::hosts::is_root() {
        bail!("kv power-cut needs root: it makes an ext4 filesystem in a file and mounts it through a loop device");
    }
    let base = match dir {
        Some(dir) if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) => bail!(
            "{} is not empty: the power-cut test needs a fresh directory",
            dir.display()
        ),
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("quorumlab-kv-power-{}", std::process::id())),
    };
    std::fs::create_dir_all(&base)?;
    let result = cut_lives(&base, plan);
    let _ = std::fs::remove_dir_all(&base);
    result?.report(plan, json)
}

fn cut_lives(base: &Path, plan: &CrashPlan) -> Result<CutTally> {
    let mut disk = Ext4Disk::make(base)?;
    let store_dir = disk.mount.join("store");
    Store::create(&store_dir, plan.fsync.0)?;
    disk.sync()?;
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let bar = progress(plan.kills, "power cuts");
    let mut tally = CutTally::default();
    let mut durable = BTreeSet::new();
    for _ in 0..plan.kills {
        let life = Duration::from_millis(rng.gen_range(20..300));
        let new = one_life(&store_dir, plan, life)?;
        let started = Instant::now();
        disk.cut_power()?;
        tally.cut_ms_max = tally.cut_ms_max.max(started.elapsed().as_secs_f64() * 1e3);
        tally.check(&store_dir, &mut durable, &new)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(disk);
    Ok(tally)
}

impl CutTally {
    /// Recovers the store after a cut: this life's acknowledged writes, and every write found
    /// after an earlier cut (which was on the disk then), must be there.
    fn check(&mut self, dir: &Path, durable: &mut BTreeSet<u64>, new: &[u64]) -> Result<()> {
        let store = Store::open(dir, Fsync::Never)?;
        if store.recovery().stop != Stop::End {
            self.torn_tails += 1;
        }
        let kept = |seq: &u64| {
            store.get(format!("k{seq}").as_bytes()) == Some(format!("v{seq}").as_bytes())
        };
        let lost: Vec<u64> = new
            .iter()
            .chain(durable.iter())
            .filter(|seq| !kept(seq))
            .copied()
            .collect();
        self.cuts += 1;
        self.acked += new.len() as u64;
        self.cuts_that_lost += u64::from(!lost.is_empty());
        durable.retain(kept);
        durable.extend(new.iter().filter(|seq| kept(seq)));
        self.lost.extend(lost);
        Ok(())
    }

    fn report(&self, plan: &CrashPlan, json: bool) -> Result<()> {
        if json {
            let value = serde_json::json!({
                "fsync": plan.fsync.1, "writers": plan.writers, "power_cuts": self.cuts,
                "acknowledged": self.acked, "lost": self.lost.len(),
                "cuts_that_lost": self.cuts_that_lost,
                "lost_examples": self.lost.iter().take(5).collect::<Vec<_>>(),
                "torn_tails_cut": self.torn_tails, "cut_and_reboot_ms_max": self.cut_ms_max,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!(
                "{} power cuts of an ext4 disk with --fsync {}, {} writer(s): {} writes acknowledged, {} lost ({} of the cuts lost some); {} torn tails cut",
                self.cuts, plan.fsync.1, plan.writers, self.acked, self.lost.len(),
                self.cuts_that_lost, self.torn_tails
            );
            if plan.fsync.0 == Fsync::Never && !self.lost.is_empty() {
                println!("(--fsync never acknowledged writes that were only in the page cache: ext4 writes dirty data back after 30 s, and the power went first.)");
            }
        }
        if let Some(first) = self.lost.first() {
            bail!(SafetyViolation(format!(
                "{} acknowledged writes missing after the power cuts, e.g. k{first}",
                self.lost.len()
            )));
        }
        Ok(())
    }
}

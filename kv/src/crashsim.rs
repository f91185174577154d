//! Crash runs of the store on the simulated disk: a seeded workload of puts and deletes, the
//! power cut at a seeded disk call (the call in flight may reach the page cache, then nothing
//! more does), the disk after reboot ([`SimDisk::crash`]), recovery, and the check.
//!
//! The check: every acknowledged write is there with its value (a key may instead hold the
//! write that was in flight when the power went, whole), and nothing else is: no value that was
//! never written to its key, no half-written one. A store that was never fully made may be
//! missing only if nothing was acknowledged.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::disk::Disk;
use crate::simdisk::SimDisk;
use crate::store::{Broken, Fsync, Store};
use crate::StoreError;

/// What one crash run did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRun {
    /// Its seed.
    pub seed: u64,
    /// Writes acknowledged before the power cut.
    pub acked: u64,
    /// The disk call the power went at.
    pub cut_at_call: usize,
    /// Bytes written but not synced at the cut: what the crash could lose.
    pub unsynced_bytes: usize,
    /// Whether recovery cut a torn or corrupt tail off the log.
    pub tail_cut: bool,
    /// What broke the rules, if anything.
    pub violation: Option<String>,
}

/// A disk whose power goes at call `cut_at`: that call reaches the page cache (a write that
/// was issued), fails, and so does every later one.
struct PowerCut {
    disk: Rc<RefCell<SimDisk>>,
    calls: usize,
    cut_at: usize,
    trace: Trace,
}

/// What a traced run says, step by step (`None`: not traced).
type Trace = Rc<RefCell<Option<Vec<String>>>>;

fn note(trace: &Trace, line: impl FnOnce() -> String) {
    if let Some(lines) = trace.borrow_mut().as_mut() {
        lines.push(line());
    }
}

impl PowerCut {
    fn call(&mut self, what: &str, f: impl FnOnce(&mut SimDisk)) -> Result<(), StoreError> {
        if self.calls > self.cut_at {
            return Err(StoreError::Failed("the power is off".into()));
        }
        f(&mut self.disk.borrow_mut());
        self.calls += 1;
        if self.calls > self.cut_at {
            note(&self.trace, || {
                format!("    disk: {what} -- and the POWER GOES")
            });
            return Err(StoreError::Failed("the power went".into()));
        }
        note(&self.trace, || format!("    disk: {what}"));
        Ok(())
    }
}

impl Disk for PowerCut {
    fn place(&self) -> String {
        "the simulated disk".into()
    }
    fn is_empty(&mut self) -> Result<bool, StoreError> {
        Disk::is_empty(&mut *self.disk.borrow_mut())
    }
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = None;
        self.call(&format!("read {name}"), |d| {
            out = SimDisk::read(d, name).map(<[u8]>::to_vec)
        })?;
        Ok(out)
    }
    fn create(&mut self, name: &str) -> Result<(), StoreError> {
        self.call(&format!("create {name}"), |d| SimDisk::create(d, name))
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let what = format!("append {} bytes to {name} (to the page cache)", bytes.len());
        self.call(&what, |d| SimDisk::append(d, name, bytes))
    }
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StoreError> {
        let what = format!("truncate {name} to {len} bytes");
        self.call(&what, |d| SimDisk::truncate(d, name, len as usize))
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        self.call(&format!("rename {from} to {to}"), |d| {
            SimDisk::rename(d, from, to)
        })
    }
    fn sync_file(&mut self, name: &str) -> Result<(), StoreError> {
        self.call(&format!("fsync {name}: its bytes are durable"), |d| {
            SimDisk::sync_file(d, name)
        })
    }
    fn sync_dir(&mut self) -> Result<(), StoreError> {
        self.call(
            "fsync the directory: its names are durable",
            SimDisk::sync_dir,
        )
    }
}

/// splitmix64: the run's only source of choices, so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}

/// Keys the workload writes (few, so they are overwritten and deleted).
const KEYS: usize = 6;

/// The value the workload's op `op` of run `seed` writes: unique, and 1 to 1,500 bytes, so
/// that records cross sector boundaries and can tear.
fn value(seed: u64, op: usize, len: usize) -> Vec<u8> {
    let tag = format!("{seed}:{op}:");
    tag.bytes()
        .chain((0..).map(|i| b'a' + (i % 26) as u8))
        .take(len.max(tag.len()))
        .collect()
}

/// One crash run of `seed` under `fsync` (with `broken`, a deliberately broken build).
pub fn crash_run(seed: u64, fsync: Fsync, broken: Option<Broken>) -> CrashRun {
    crash_run_traced(seed, fsync, broken, false).0
}

/// [`crash_run`], and with `traced` what happened, step by step, for a learner.
pub fn crash_run_traced(
    seed: u64,
    fsync: Fsync,
    broken: Option<Broken>,
    traced: bool,
) -> (CrashRun, Vec<String>) {
    let trace: Trace = Rc::new(RefCell::new(traced.then(Vec::new)));
    let mut rng = Rng(seed);
    let ops = 1 + rng.below(40);
    // Making the store takes 9 calls; each write 2 (append, sync); a checkpoint 7.
    let cut_at = rng.below(9 + 3 * ops + 2);
    let sim = Rc::new(RefCell::new(SimDisk::new()));
    let disk = PowerCut {
        disk: sim.clone(),
        calls: 0,
        cut_at,
        trace: trace.clone(),
    };
    note(&trace, || {
        format!(
            "seed {seed}: {ops} operations; the power goes at disk call {}",
            cut_at + 1
        )
    });
    note(&trace, || "make the store".into());
    // What was acknowledged last for each key (None: deleted), and the write in flight.
    let mut acked: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut in_flight: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
    let mut count = 0;
    if let Ok(mut store) = Store::create_on(disk, fsync, broken) {
        for op in 0..ops {
            if rng.below(8) == 0 {
                note(&trace, || format!("checkpoint ({} keys)", store.len()));
                if store.checkpoint().is_err() {
                    break;
                }
            }
            let key = format!("k{}", rng.below(KEYS)).into_bytes();
            let write = match rng.below(5) {
                0 => None,
                _ => Some(value(seed, op, 1 + rng.below(1500))),
            };
            in_flight = Some((key.clone(), write.clone()));
            let what = match &write {
                Some(v) => format!("put {} ({} bytes)", String::from_utf8_lossy(&key), v.len()),
                None => format!("delete {}", String::from_utf8_lossy(&key)),
            };
            note(&trace, || what.clone());
            let done = match &write {
                Some(v) => store.put(&key, v),
                None => store.delete(&key),
            };
            if done.is_err() {
                note(&trace, || format!("  {what}: never acknowledged"));
                break;
            }
            note(&trace, || format!("  {what}: acknowledged"));
            acked.insert(key, write);
            count += 1;
            in_flight = None;
        }
    }
    let unsynced_bytes = sim.borrow().unsynced_bytes();
    note(&trace, || {
        format!("the power is off: {unsynced_bytes} bytes were in the page cache and not yet on the disk")
    });
    let mut reboot = Vec::new();
    let after = sim.borrow().crash_noted(&mut |n| rng.below(n), &mut reboot);
    note(&trace, || {
        "reboot: the disk holds what was synced, and of the rest:".into()
    });
    for line in reboot {
        note(&trace, || format!("  {line}"));
    }
    let (violation, tail_cut) = check(after, broken, &acked, in_flight.as_ref());
    note(&trace, || {
        match &violation {
        None => format!("recovered and checked: all {} acknowledged keys as acknowledged, nothing half-written{}", acked.len(), if tail_cut { " (a torn tail was cut off the log)" } else { "" }),
        Some(v) => format!("recovered and checked: BROKEN: {v}"),
    }
    });
    let run = CrashRun {
        seed,
        acked: count,
        cut_at_call: cut_at,
        unsynced_bytes,
        tail_cut,
        violation,
    };
    let lines = trace.borrow_mut().take().unwrap_or_default();
    (run, lines)
}

/// Recovers the store from `disk` and checks it against what was acknowledged.
fn check(
    disk: SimDisk,
    broken: Option<Broken>,
    acked: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    in_flight: Option<&(Vec<u8>, Option<Vec<u8>>)>,
) -> (Option<String>, bool) {
    let store = match Store::open_on(disk, Fsync::Always, broken) {
        Ok(store) => store,
        Err(StoreError::NotAStore(_)) if acked.is_empty() => return (None, false),
        Err(e) => {
            return (
                Some(format!(
                    "recovery failed after {} acknowledged writes: {e}",
                    acked.len()
                )),
                false,
            )
        }
    };
    let tail_cut = store.recovery().cut_bytes > 0;
    let name = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    let in_flight_for = |key: &[u8]| in_flight.filter(|(k, _)| k == key).map(|(_, w)| w);
    for (key, last) in acked {
        let got = store.get(key).map(<[u8]>::to_vec);
        if got != *last && in_flight_for(key) != Some(&got) {
            let what = match last {
                Some(v) => format!(
                    "the acknowledged {} ({} bytes)",
                    name(&v[..v.len().min(12)]),
                    v.len()
                ),
                None => "its acknowledged delete".into(),
            };
            let found = got.map_or("nothing".into(), |v| format!("{} bytes", v.len()));
            return (
                Some(format!("{}: lost {what}; found {found}", name(key))),
                tail_cut,
            );
        }
    }
    for (key, value) in store.entries() {
        if !acked.contains_key(key) && in_flight_for(key) != Some(&Some(value.to_vec())) {
            return (
                Some(format!(
                    "{}: holds {} bytes that were never written whole to it",
                    name(key),
                    value.len()
                )),
                tail_cut,
            );
        }
    }
    (None, tail_cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_survives_every_crash_of_a_thousand_seeds() {
        let runs: Vec<CrashRun> = (1..=1000)
            .map(|s| crash_run(s, Fsync::Always, None))
            .collect();
        let bad: Vec<_> = runs.iter().filter(|r| r.violation.is_some()).collect();
        assert!(bad.is_empty(), "{:?}", bad.first());
        assert!(
            runs.iter().any(|r| r.tail_cut),
            "some crash tore the log's tail"
        );
        assert!(runs.iter().map(|r| r.acked).sum::<u64>() > 1000);
    }

    #[test]
    fn a_seed_replays_exactly() {
        assert_eq!(
            crash_run(42, Fsync::Always, None),
            crash_run(42, Fsync::Always, None)
        );
    }

    #[test]
    fn fsync_never_loses_acknowledged_writes_and_batch_does_not() {
        let lost = (1..=500).find_map(|s| crash_run(s, Fsync::Never, None).violation);
        assert!(lost.is_some(), "never lost nothing in 500 power cuts");
        assert!((1..=500).all(|s| crash_run(s, Fsync::Batch, None).violation.is_none()));
    }

    #[test]
    fn every_broken_build_is_caught() {
        for broken in [
            Broken::SkipFsync,
            Broken::SkipDirFsync,
            Broken::NoCrc,
            Broken::AckBeforeFsync,
        ] {
            let caught =
                (1..=2000).find_map(|s| crash_run(s, Fsync::Always, Some(broken)).violation);
            assert!(caught.is_some(), "{broken:?} was not caught in 2,000 seeds");
        }
    }
}

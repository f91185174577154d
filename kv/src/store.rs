//! A table in memory over a write-ahead log in a directory.
//!
//! The directory holds `FORMAT` (what makes it a store, and which version) and `wal.log`, the
//! records since the store was created. Opening replays the log's valid prefix into the table
//! and truncates the file to it (then syncs it), so a torn tail from a crash is gone before the
//! next record is appended behind it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::record::{frame, scan, Op, Stop};
use crate::StoreError;

/// The first line of `FORMAT`.
const FORMAT: &str = "quorumlab-kv 1";
const FORMAT_FILE: &str = "FORMAT";
const LOG_FILE: &str = "wal.log";

/// When a write is made durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `fdatasync` the log after every write: nothing acknowledged is lost in a crash.
    Always,
    /// Group commit: a writer waits until one `fdatasync` covers its record, and writers that
    /// arrive while one is running share the next (only with [`Shared`]; a lone [`Store`]
    /// syncs every write, as `Always`).
    Batch,
    /// Never sync: the page cache decides, and a machine crash loses what it held (the lesson's
    /// unsafe baseline; a killed process loses nothing the kernel already has).
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Fsync, String> {
        match text {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            "never" => Ok(Fsync::Never),
            _ => Err(format!(
                "'{text}' is no fsync policy (always, batch, never)"
            )),
        }
    }
}

/// What opening found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// Bytes cut off the end of the log (a torn or corrupt tail).
    pub cut_bytes: u64,
    /// Why the valid log ended where it did.
    pub stop: Stop,
}

/// The store: the table, the log it is rebuilt from, and the policy that acknowledges writes.
pub struct Store {
    dir: PathBuf,
    table: BTreeMap<Vec<u8>, Vec<u8>>,
    log: File,
    next_seq: u64,
    fsync: Fsync,
    recovery: Recovery,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Store {
    /// Makes a new store in `dir` (created if missing; it must be empty).
    pub fn create(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(StoreError::NotAStore(format!(
                "{} is not empty: a new store needs an empty directory",
                dir.display()
            )));
        }
        let log = dir.join(LOG_FILE);
        File::create(&log)
            .map_err(io(&log))?
            .sync_all()
            .map_err(io(&log))?;
        // FORMAT last: a directory without it was never a whole store.
        let format = dir.join(FORMAT_FILE);
        let mut file = File::create(&format).map_err(io(&format))?;
        writeln!(file, "{FORMAT}").map_err(io(&format))?;
        file.sync_all().map_err(io(&format))?;
        sync_dir(dir)?;
        Store::open(dir, fsync)
    }

    /// Opens the store in `dir`: replays its log and cuts off what follows the valid prefix.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        check_format(dir)?;
        let path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io(&path))?;
        let found = scan(&bytes, 1);
        let mut table = BTreeMap::new();
        for (seq, payload) in &found.records {
            let op = Op::decode(payload).ok_or_else(|| {
                StoreError::NotAStore(format!(
                    "{}: record {seq} has a valid checksum but is no operation of this store",
                    path.display()
                ))
            })?;
            apply(&mut table, op);
        }
        let cut_bytes = (bytes.len() - found.valid_bytes) as u64;
        if cut_bytes > 0 {
            log.set_len(found.valid_bytes as u64).map_err(io(&path))?;
            log.sync_all().map_err(io(&path))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            table,
            log,
            next_seq: found.records.len() as u64 + 1,
            fsync,
            recovery: Recovery {
                records: found.records.len() as u64,
                cut_bytes,
                stop: found.stop,
            },
        })
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.table.get(key).map(Vec::as_slice)
    }

    /// Sets `key` to `value`; returns once the write is durable under the policy.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        self.write(Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
    }

    /// Removes `key`; returns once the removal is durable under the policy.
    pub fn delete(&mut self, key: &[u8]) -> Result<u64, StoreError> {
        self.write(Op::Delete { key: key.to_vec() })
    }

    /// Logs `op`, syncs as the policy says (`Batch` as `Always`: a lone store has no one to
    /// share a sync with): the sequence number it got.
    fn write(&mut self, op: Op) -> Result<u64, StoreError> {
        let seq = self.append(op)?;
        if self.fsync != Fsync::Never {
            let path = self.dir.join(LOG_FILE);
            self.log.sync_data().map_err(io(&path))?;
        }
        Ok(seq)
    }

    /// Appends `op` to the log (no sync) and applies it: the sequence number it got.
    fn append(&mut self, op: Op) -> Result<u64, StoreError> {
        op.check()?;
        let seq = self.next_seq;
        let path = self.dir.join(LOG_FILE);
        self.log
            .write_all(&frame(seq, &op.encode()))
            .map_err(io(&path))?;
        self.next_seq += 1;
        apply(&mut self.table, op);
        Ok(seq)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// A store shared by writer threads. Under [`Fsync::Batch`] each writer appends its record
/// under the lock, then waits until a sync covers it: the first writer to find no sync running
/// runs one, outside the lock, for every record appended so far, and wakes the others. A get
/// may see a write whose put has not returned yet (it is in the log, not yet synced).
pub struct Shared {
    state: std::sync::Mutex<SharedState>,
    synced: std::sync::Condvar,
    /// A second handle on the log, to sync it without holding the lock.
    sync_handle: File,
}

struct SharedState {
    store: Store,
    /// The highest sequence number a finished sync covers.
    synced_seq: u64,
    /// Whether a writer is syncing now.
    syncing: bool,
    /// Syncs run.
    syncs: u64,
    /// A failed sync: the page cache can no longer be trusted, so every later write fails.
    failed: Option<String>,
}

impl Shared {
    /// Shares `store` (its policy decides how writes are synced).
    pub fn new(store: Store) -> Result<Shared, StoreError> {
        let path = store.dir.join(LOG_FILE);
        let sync_handle = store.log.try_clone().map_err(io(&path))?;
        let synced_seq = store.next_seq - 1;
        Ok(Shared {
            state: std::sync::Mutex::new(SharedState {
                store,
                synced_seq,
                syncing: false,
                syncs: 0,
                failed: None,
            }),
            synced: std::sync::Condvar::new(),
            sync_handle,
        })
    }

    /// Sets `key` to `value`; returns once the write is durable under the policy.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let mut state = self.lock();
        if let Some(why) = &state.failed {
            return Err(StoreError::Failed(why.clone()));
        }
        let policy = state.store.fsync;
        if policy != Fsync::Batch {
            let seq = state.store.write(op)?;
            state.syncs += u64::from(policy == Fsync::Always);
            state.synced_seq = seq;
            return Ok(seq);
        }
        // Appended without a sync; the loop below waits for one that covers it.
        let seq = state.store.append(op)?;
        self.wait_until_synced(state, seq)
    }

    fn wait_until_synced<'a>(
        &'a self,
        mut state: std::sync::MutexGuard<'a, SharedState>,
        seq: u64,
    ) -> Result<u64, StoreError> {
        loop {
            if let Some(why) = &state.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            if state.synced_seq >= seq {
                return Ok(seq);
            }
            if state.syncing {
                state = self.synced.wait(state).expect("not poisoned");
                continue;
            }
            state.syncing = true;
            let target = state.store.next_seq - 1;
            drop(state);
            let synced = self.sync_handle.sync_data();
            state = self.lock();
            state.syncing = false;
            state.syncs += 1;
            match synced {
                Ok(()) => state.synced_seq = state.synced_seq.max(target),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.synced.notify_all();
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().store.get(key).map(<[u8]>::to_vec)
    }

    /// Syncs run so far (a write under `Always` is one; under `Batch` one covers many).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().expect("not poisoned")
    }
}

fn apply(table: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: Op) {
    match op {
        Op::Put { key, value } => {
            table.insert(key, value);
        }
        Op::Delete { key } => {
            table.remove(&key);
        }
    }
}

fn check_format(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(FORMAT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        StoreError::NotAStore(format!(
            "{} is not a store (no {FORMAT_FILE} file)",
            dir.display()
        ))
    })?;
    match text.lines().next() {
        Some(FORMAT) => Ok(()),
        first => Err(StoreError::NotAStore(format!(
            "{}: format '{}', this build reads '{FORMAT}'",
            path.display(),
            first.unwrap_or("")
        ))),
    }
}

/// Syncs `dir` itself, so that the names created in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path(), Fsync::Always).unwrap();
        assert_eq!(store.put(b"a", b"1").unwrap(), 1);
        store.put(b"b", b"2").unwrap();
        store.delete(b"a").unwrap();
        drop(store);
        let store = Store::open(dir.path(), Fsync::Always).unwrap();
        assert_eq!(store.get(b"a"), None);
        assert_eq!(store.get(b"b"), Some(&b"2"[..]));
        assert_eq!(store.recovery().records, 3);
        assert_eq!(store.recovery().stop, Stop::End);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_next_write_follows_the_valid_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path(), Fsync::Always).unwrap();
        store.put(b"a", b"1").unwrap();
        drop(store);
        // Half of a second record, as a crash in the middle of its write leaves it.
        let torn = frame(
            2,
            &Op::Put {
                key: b"b".to_vec(),
                value: b"2".to_vec(),
            }
            .encode(),
        );
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        log.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(log);
        let mut store = Store::open(dir.path(), Fsync::Always).unwrap();
        assert_eq!(store.recovery().stop, Stop::Torn);
        assert_eq!(store.recovery().cut_bytes, (torn.len() / 2) as u64);
        assert_eq!(store.get(b"b"), None, "nothing partial is applied");
        assert_eq!(store.put(b"c", b"3").unwrap(), 2);
        drop(store);
        let store = Store::open(dir.path(), Fsync::Never).unwrap();
        assert_eq!(store.recovery().stop, Stop::End);
        assert_eq!(
            (store.get(b"a"), store.get(b"c")),
            (Some(&b"1"[..]), Some(&b"3"[..]))
        );
    }

    #[test]
    fn a_directory_that_is_not_a_store_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let e = Store::open(dir.path(), Fsync::Always).err().unwrap();
        assert!(e.to_string().contains("is not a store"), "{e}");
        let e = Store::create(dir.path(), Fsync::Always).err().unwrap();
        assert!(e.to_string().contains("is not empty"), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing written");
    }

    #[test]
    fn writers_under_group_commit_share_syncs_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path(), Fsync::Batch).unwrap();
        let shared = std::sync::Arc::new(Shared::new(store).unwrap());
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let key = format!("w{w}-{i}");
                        shared.put(key.as_bytes(), b"v").unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let syncs = shared.syncs();
        assert!((1..=800).contains(&syncs), "{syncs}");
        drop(shared);
        let store = Store::open(dir.path(), Fsync::Batch).unwrap();
        assert_eq!(store.len(), 800);
        assert_eq!(store.recovery().stop, Stop::End);
    }

    #[test]
    fn over_the_limits_is_refused_before_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path(), Fsync::Never).unwrap();
        let e = store.put(&[b'k'; 2000], b"v").err().unwrap();
        assert!(e.to_string().contains("a key has 1 to 1024 bytes"), "{e}");
        assert_eq!(
            std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
            0
        );
    }
}

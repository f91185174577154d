//! A table in memory over a write-ahead log in a directory.
//!
//! The directory holds `FORMAT` (what makes it a store, and which version) and `wal.log`, the
//! records since the store was created. Opening replays the log's valid prefix into the table
//! and truncates the file to it (then syncs it), so a torn tail from a crash is gone before the
//! next record is appended behind it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::disk::{Disk, FsDisk};
use crate::record::{frame, scan, scan_with, Op, Stop};
use crate::StoreError;

/// The first line of `FORMAT`.
const FORMAT: &str = "quorumlab-kv 1";
const FORMAT_FILE: &str = "FORMAT";
const LOG_FILE: &str = "wal.log";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";

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

/// Keys and values, in key order.
type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// The store: the table, the disk its log is on, and the policy that acknowledges writes.
pub struct Store<D: Disk = FsDisk> {
    disk: D,
    table: Table,
    next_seq: u64,
    fsync: Fsync,
    recovery: Recovery,
    broken: Option<Broken>,
    /// Under `Broken::AckBeforeFsync`: a record acknowledged but not yet synced.
    unsynced: bool,
}

/// Deliberately broken builds, each a shortcut that loses data a crash can show (the crash
/// sweeps must catch every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Acknowledge a write without syncing the log.
    SkipFsync,
    /// Skip the directory sync after a checkpoint's rename: the snapshot's new name may not
    /// survive, and the log it replaces is emptied all the same.
    SkipDirFsync,
    /// Replay records without checking their checksums.
    NoCrc,
    /// Acknowledge a write, then sync it on the next one.
    AckBeforeFsync,
}

impl std::str::FromStr for Broken {
    type Err = String;

    fn from_str(text: &str) -> Result<Broken, String> {
        match text {
            "skip-fsync" => Ok(Broken::SkipFsync),
            "skip-dir-fsync" => Ok(Broken::SkipDirFsync),
            "no-crc" => Ok(Broken::NoCrc),
            "ack-before-fsync" => Ok(Broken::AckBeforeFsync),
            _ => Err(format!(
                "'{text}' is no broken build (skip-fsync, skip-dir-fsync, no-crc, ack-before-fsync)"
            )),
        }
    }
}

impl Store<FsDisk> {
    /// Makes a new store in `dir` (created if missing; it must be empty).
    pub fn create(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        Store::create_on(FsDisk::new(dir)?, fsync, None)
    }

    /// Opens the store in `dir`: replays its log and cuts off what follows the valid prefix.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        if !dir.is_dir() {
            return Err(StoreError::NotAStore(format!(
                "{} is not a store (no such directory)",
                dir.display()
            )));
        }
        Store::open_on(FsDisk::new(dir)?, fsync, None)
    }
}

impl<D: Disk> Store<D> {
    /// Makes a new store on `disk`, which must be empty: the log, then `FORMAT` (a directory
    /// without it was never a whole store), each synced, then the directory.
    pub fn create_on(
        mut disk: D,
        fsync: Fsync,
        broken: Option<Broken>,
    ) -> Result<Store<D>, StoreError> {
        if !disk.is_empty()? {
            return Err(StoreError::NotAStore(format!(
                "{} is not empty: a new store needs an empty directory",
                disk.place()
            )));
        }
        disk.create(LOG_FILE)?;
        disk.sync_file(LOG_FILE)?;
        disk.create(FORMAT_FILE)?;
        disk.append(FORMAT_FILE, format!("{FORMAT}\n").as_bytes())?;
        disk.sync_file(FORMAT_FILE)?;
        disk.sync_dir()?;
        Store::open_on(disk, fsync, broken)
    }

    /// Opens the store on `disk`: replays its log and cuts off what follows the valid prefix.
    pub fn open_on(
        mut disk: D,
        fsync: Fsync,
        broken: Option<Broken>,
    ) -> Result<Store<D>, StoreError> {
        check_format(&mut disk)?;
        // The snapshot first: a corrupt one is refused before anything is changed.
        let (mut table, covers) = load_snapshot(&mut disk)?;
        let bytes = disk.read(LOG_FILE)?.ok_or_else(|| {
            StoreError::NotAStore(format!("{}: the store has no {LOG_FILE}", disk.place()))
        })?;
        let found = scan_with(&bytes, covers + 1, broken != Some(Broken::NoCrc));
        for (seq, payload) in &found.records {
            let op = Op::decode(payload).ok_or_else(|| {
                StoreError::NotAStore(format!(
                    "{}: record {seq} of {LOG_FILE} has a valid checksum but is no operation of this store",
                    disk.place()
                ))
            })?;
            apply(&mut table, op);
        }
        let cut_bytes = (bytes.len() - found.valid_bytes) as u64;
        if cut_bytes > 0 {
            disk.truncate(LOG_FILE, found.valid_bytes as u64)?;
            disk.sync_file(LOG_FILE)?;
        }
        Ok(Store {
            disk,
            table,
            next_seq: covers + found.records.len() as u64 + 1,
            fsync,
            recovery: Recovery {
                records: found.records.len() as u64,
                cut_bytes,
                stop: found.stop,
            },
            broken,
            unsynced: false,
        })
    }

    /// Writes the table to a snapshot and empties the log: the snapshot to a temporary file,
    /// synced, renamed into place, the directory synced (so the new name is durable before the
    /// log it replaces is cut), then the log truncated and synced. Returns the last sequence
    /// number the snapshot covers.
    pub fn checkpoint(&mut self) -> Result<u64, StoreError> {
        let covers = self.next_seq - 1;
        let mut bytes = frame(0, &covers.to_le_bytes());
        for (n, (key, value)) in self.table.iter().enumerate() {
            let op = Op::Put {
                key: key.clone(),
                value: value.clone(),
            };
            bytes.extend(frame(n as u64 + 1, &op.encode()));
        }
        self.disk.create(SNAPSHOT_TMP_FILE)?;
        self.disk.append(SNAPSHOT_TMP_FILE, &bytes)?;
        self.disk.sync_file(SNAPSHOT_TMP_FILE)?;
        self.disk.rename(SNAPSHOT_TMP_FILE, SNAPSHOT_FILE)?;
        if self.broken != Some(Broken::SkipDirFsync) {
            self.disk.sync_dir()?;
        }
        self.disk.truncate(LOG_FILE, 0)?;
        self.disk.sync_file(LOG_FILE)?;
        self.unsynced = false;
        Ok(covers)
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The disk (to crash it, in a simulation).
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.table.get(key).map(Vec::as_slice)
    }

    /// Every key and value, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
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
        if self.broken == Some(Broken::AckBeforeFsync) && self.unsynced {
            self.disk.sync_file(LOG_FILE)?;
            self.unsynced = false;
        }
        let seq = self.append(op)?;
        match (self.fsync, self.broken) {
            (Fsync::Never, _) | (_, Some(Broken::SkipFsync)) => {}
            (_, Some(Broken::AckBeforeFsync)) => self.unsynced = true,
            _ => self.disk.sync_file(LOG_FILE)?,
        }
        Ok(seq)
    }

    /// Appends `op` to the log (no sync) and applies it: the sequence number it got.
    fn append(&mut self, op: Op) -> Result<u64, StoreError> {
        op.check()?;
        let seq = self.next_seq;
        self.disk.append(LOG_FILE, &frame(seq, &op.encode()))?;
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
        let mut store = store;
        let sync_handle = store.disk.handle(LOG_FILE)?;
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

/// The snapshot's table and the last sequence number it covers (an empty table and 0 when there
/// is none). Its first record carries that number; every other is a put. A snapshot is synced
/// before it is renamed into place, so anything but whole, valid records means corruption, and
/// the store is refused rather than opened without it.
fn load_snapshot<D: Disk>(disk: &mut D) -> Result<(Table, u64), StoreError> {
    let Some(bytes) = disk.read(SNAPSHOT_FILE)? else {
        return Ok((BTreeMap::new(), 0));
    };
    let corrupt = |what: String| {
        StoreError::NotAStore(format!(
            "{}: {SNAPSHOT_FILE} is corrupt ({what}); nothing was changed",
            disk.place()
        ))
    };
    let found = scan(&bytes, 0);
    if found.stop != Stop::End {
        return Err(corrupt(format!(
            "{:?} record after {} bytes",
            found.stop, found.valid_bytes
        )));
    }
    let mut records = found.records.into_iter();
    let covers = records
        .next()
        .and_then(|(_, payload)| Some(u64::from_le_bytes(payload.try_into().ok()?)))
        .ok_or_else(|| corrupt("no header record".into()))?;
    let mut table = BTreeMap::new();
    for (seq, payload) in records {
        match Op::decode(&payload) {
            Some(Op::Put { key, value }) => {
                table.insert(key, value);
            }
            _ => return Err(corrupt(format!("record {seq} is not a put"))),
        }
    }
    Ok((table, covers))
}

fn check_format<D: Disk>(disk: &mut D) -> Result<(), StoreError> {
    let text = disk.read(FORMAT_FILE)?.ok_or_else(|| {
        StoreError::NotAStore(format!(
            "{} is not a store (no {FORMAT_FILE} file)",
            disk.place()
        ))
    })?;
    let text = String::from_utf8_lossy(&text);
    match text.lines().next() {
        Some(FORMAT) => Ok(()),
        first => Err(StoreError::NotAStore(format!(
            "{}: {FORMAT_FILE} says '{}', this build reads '{FORMAT}'",
            disk.place(),
            first.unwrap_or("")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

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
    fn a_checkpoint_replaces_the_log_and_a_corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path(), Fsync::Always).unwrap();
        store.put(b"a", b"1").unwrap();
        store.put(b"b", b"2").unwrap();
        store.delete(b"a").unwrap();
        assert_eq!(store.checkpoint().unwrap(), 3);
        assert_eq!(store.put(b"c", b"3").unwrap(), 4, "sequence numbers go on");
        drop(store);
        let store = Store::open(dir.path(), Fsync::Always).unwrap();
        let entries: Vec<_> = store.entries().collect();
        assert_eq!(
            entries,
            vec![(&b"b"[..], &b"2"[..]), (&b"c"[..], &b"3"[..])]
        );
        assert_eq!(
            store.recovery().records,
            1,
            "only the write after the checkpoint is replayed"
        );
        drop(store);
        let snapshot = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&snapshot).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&snapshot, &bytes).unwrap();
        let log_before = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let e = Store::open(dir.path(), Fsync::Always).err().unwrap();
        assert!(e.to_string().contains("snapshot is corrupt"), "{e}");
        assert_eq!(std::fs::read(&snapshot).unwrap(), bytes, "nothing changed");
        assert_eq!(
            std::fs::read(dir.path().join(LOG_FILE)).unwrap(),
            log_before
        );
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

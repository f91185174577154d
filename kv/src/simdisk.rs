//! A simulated disk with the semantics that decide what a crash leaves: a page cache over
//! durable storage, where only `fsync` makes data durable.
//!
//! Files are inodes reached through names. A write or truncate changes what the program sees at
//! once and is *pending* until the file is synced; a create, rename or remove changes the live
//! directory at once and is durable only once the directory is synced. [`SimDisk::crash`] keeps
//! what was durable and lets a seeded choice of the pending writes reach the disk as well, in any
//! order, each either whole, not at all, or torn at sector granularity (some of its 512-byte
//! sectors written, others not) — what a real disk may do with writes it had not been told to
//! flush. Names come back as the last directory sync left them.
//!
//! This module is the model only; the store runs on it through the next step of the durability
//! lab (a disk trait for the store, seeded crash sweeps, broken builds).

use std::collections::BTreeMap;

/// The unit a disk writes atomically.
pub const SECTOR_BYTES: usize = 512;

/// One change to a file's bytes that has not reached the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Write { offset: usize, bytes: Vec<u8> },
    Truncate { len: usize },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Inode {
    /// What the disk holds.
    durable: Vec<u8>,
    /// What the program sees.
    live: Vec<u8>,
    /// Changes since the last sync, in the order they were made.
    pending: Vec<Pending>,
}

/// The disk: inodes, and the directory as the program sees it and as the disk holds it.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inodes: Vec<Inode>,
    live_names: BTreeMap<String, usize>,
    durable_names: BTreeMap<String, usize>,
}

/// A choice the crash makes, asked of the caller's seeded generator: a number below `n`.
pub type Choose<'a> = &'a mut dyn FnMut(usize) -> usize;

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Makes a new, empty file named `name` (a name that reached another file now reaches this one).
    pub fn create(&mut self, name: &str) {
        self.inodes.push(Inode::default());
        self.live_names
            .insert(name.to_string(), self.inodes.len() - 1);
    }

    /// The file names the program sees, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.live_names.keys().map(String::as_str)
    }

    /// Whether `name` exists for the program.
    pub fn exists(&self, name: &str) -> bool {
        self.live_names.contains_key(name)
    }

    /// The file's bytes as the program reads them.
    pub fn read(&self, name: &str) -> Option<&[u8]> {
        Some(&self.inodes[*self.live_names.get(name)?].live)
    }

    /// Writes `bytes` at the end of `name`.
    pub fn append(&mut self, name: &str, bytes: &[u8]) {
        let inode = self.inode(name);
        let offset = inode.live.len();
        inode.live.extend_from_slice(bytes);
        inode.pending.push(Pending::Write {
            offset,
            bytes: bytes.to_vec(),
        });
    }

    /// Cuts `name` to `len` bytes.
    pub fn truncate(&mut self, name: &str, len: usize) {
        let inode = self.inode(name);
        inode.live.truncate(len);
        inode.pending.push(Pending::Truncate { len });
    }

    /// `fsync` of a file: its bytes are durable (not its name: that is the directory's).
    pub fn sync_file(&mut self, name: &str) {
        let inode = self.inode(name);
        inode.durable = inode.live.clone();
        inode.pending.clear();
    }

    /// Renames `from` to `to`, replacing `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        let id = self
            .live_names
            .remove(from)
            .expect("renaming a file that exists");
        self.live_names.insert(to.to_string(), id);
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.live_names.remove(name);
    }

    /// `fsync` of the directory: its names, as the program sees them, are durable.
    pub fn sync_dir(&mut self) {
        self.durable_names = self.live_names.clone();
    }

    /// Bytes written but not yet synced, over all files: what a crash may lose.
    pub fn unsynced_bytes(&self) -> usize {
        self.inodes
            .iter()
            .flat_map(|i| &i.pending)
            .map(|p| match p {
                Pending::Write { bytes, .. } => bytes.len(),
                Pending::Truncate { .. } => 0,
            })
            .sum()
    }

    /// The machine loses power: the disk after reboot. Each file keeps its durable bytes plus,
    /// by `choose`, some of its pending changes applied in some order, each write whole, torn
    /// by sector or lost; the directory is the last synced one.
    pub fn crash(&self, choose: Choose<'_>) -> SimDisk {
        self.crash_noted(choose, &mut Vec::new())
    }

    /// [`SimDisk::crash`], saying in `notes` what became of each pending change (the same
    /// choices, so the same disk).
    pub fn crash_noted(&self, choose: Choose<'_>, notes: &mut Vec<String>) -> SimDisk {
        let inodes: Vec<Inode> = self
            .inodes
            .iter()
            .enumerate()
            .map(|(id, inode)| {
                let name = self
                    .live_names
                    .iter()
                    .find(|(_, &i)| i == id)
                    .map_or("an unnamed file".to_string(), |(n, _)| n.clone());
                let bytes = settle(inode, choose, &mut |note| {
                    notes.push(format!("{name}: {note}"))
                });
                Inode {
                    durable: bytes.clone(),
                    live: bytes,
                    pending: Vec::new(),
                }
            })
            .collect();
        SimDisk {
            inodes,
            live_names: self.durable_names.clone(),
            durable_names: self.durable_names.clone(),
        }
    }

    fn inode(&mut self, name: &str) -> &mut Inode {
        let id = *self.live_names.get(name).expect("a file that exists");
        &mut self.inodes[id]
    }
}

/// What one file holds after a crash.
fn settle(inode: &Inode, choose: Choose<'_>, note: &mut dyn FnMut(String)) -> Vec<u8> {
    let mut bytes = inode.durable.clone();
    let mut pending: Vec<&Pending> = inode.pending.iter().collect();
    // Reached the disk in some order: a random permutation, then each kept or not.
    for i in (1..pending.len()).rev() {
        pending.swap(i, choose(i + 1));
    }
    for change in pending {
        match change {
            Pending::Truncate { len } => {
                let kept = choose(2) == 1;
                if kept {
                    bytes.truncate(*len);
                }
                note(format!(
                    "the truncation to {len} bytes {}",
                    if kept { "reached the disk" } else { "was lost" }
                ));
            }
            Pending::Write {
                offset,
                bytes: data,
            } => {
                let what = format!("the write of {} bytes at offset {offset}", data.len());
                match choose(3) {
                    0 => note(format!("{what} was lost")),
                    1 => {
                        write_at(&mut bytes, *offset, data, |_| true);
                        note(format!("{what} reached the disk whole"));
                    }
                    _ => {
                        let (mut kept, mut sectors) = (0, 0);
                        write_at(&mut bytes, *offset, data, |_| {
                            sectors += 1;
                            let keep = choose(2) == 1;
                            kept += usize::from(keep);
                            keep
                        });
                        note(format!(
                            "{what} was torn: {kept} of its {sectors} sectors reached the disk"
                        ));
                    }
                }
            }
        }
    }
    bytes
}

/// Writes the sectors of `data` at `offset` that `keep` (asked per sector) lets through; the
/// file grows to reach a sector written past its end (zeros between, as a hole reads).
fn write_at(file: &mut Vec<u8>, offset: usize, data: &[u8], mut keep: impl FnMut(usize) -> bool) {
    let mut at = 0;
    while at < data.len() {
        // Sector boundaries are absolute: a write that starts mid-sector has a short first one.
        let sector_end = ((offset + at) / SECTOR_BYTES + 1) * SECTOR_BYTES - offset;
        let end = sector_end.min(data.len());
        if keep(at) {
            let (from, to) = (offset + at, offset + end);
            if file.len() < to {
                file.resize(to, 0);
            }
            file[from..to].copy_from_slice(&data[at..end]);
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chooser from a fixed list of answers (then zeros).
    fn answers(list: &[usize]) -> impl FnMut(usize) -> usize + '_ {
        let mut i = 0;
        move |n| {
            let a = list.get(i).copied().unwrap_or(0) % n;
            i += 1;
            a
        }
    }

    /// Every outcome a crash can have, over `trials` pseudo-random choosers.
    fn outcomes(disk: &SimDisk, name: &str, trials: u64) -> Vec<Option<Vec<u8>>> {
        let mut seen = Vec::new();
        for seed in 0..trials {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut choose = |n: usize| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n as u64) as usize
            };
            let after = disk.crash(&mut choose);
            let got = after.read(name).map(<[u8]>::to_vec);
            if !seen.contains(&got) {
                seen.push(got);
            }
        }
        seen
    }

    #[test]
    fn synced_bytes_always_survive_and_unsynced_ones_may_not() {
        let mut disk = SimDisk::new();
        disk.create("log");
        disk.sync_dir();
        disk.append("log", b"one");
        disk.sync_file("log");
        disk.append("log", b"two");
        assert_eq!(disk.read("log"), Some(&b"onetwo"[..]));
        assert_eq!(disk.unsynced_bytes(), 3);
        let seen = outcomes(&disk, "log", 200);
        assert!(seen.contains(&Some(b"one".to_vec())));
        assert!(seen.contains(&Some(b"onetwo".to_vec())));
        assert!(seen
            .iter()
            .all(|s| s.as_deref().unwrap().starts_with(b"one")));
    }

    #[test]
    fn a_file_whose_name_was_never_synced_is_gone() {
        let mut disk = SimDisk::new();
        disk.create("new");
        disk.append("new", b"data");
        disk.sync_file("new");
        assert_eq!(outcomes(&disk, "new", 20), vec![None]);
        disk.sync_dir();
        assert_eq!(outcomes(&disk, "new", 20), vec![Some(b"data".to_vec())]);
    }

    #[test]
    fn a_rename_without_the_directory_sync_may_come_back_as_the_old_file() {
        let mut disk = SimDisk::new();
        disk.create("snapshot");
        disk.append("snapshot", b"old");
        disk.sync_file("snapshot");
        disk.create("snapshot.tmp");
        disk.append("snapshot.tmp", b"new");
        disk.sync_file("snapshot.tmp");
        disk.sync_dir();
        disk.rename("snapshot.tmp", "snapshot");
        assert_eq!(disk.read("snapshot"), Some(&b"new"[..]));
        assert_eq!(outcomes(&disk, "snapshot", 20), vec![Some(b"old".to_vec())]);
        disk.sync_dir();
        assert_eq!(outcomes(&disk, "snapshot", 20), vec![Some(b"new".to_vec())]);
    }

    #[test]
    fn a_write_across_sectors_can_be_torn_at_a_sector_boundary() {
        let mut disk = SimDisk::new();
        disk.create("log");
        disk.sync_dir();
        disk.append("log", &[1u8; 100]);
        disk.sync_file("log");
        disk.append("log", &[2u8; 1000]); // bytes 100..1100: sectors 0, 1 and 2 in part
                                          // Torn: the first sector (bytes 100..512) written, the second not, the third written.
        let after = disk.crash(&mut answers(&[2, 1, 0, 1]));
        let file = after.read("log").unwrap();
        assert_eq!(file.len(), 1100);
        assert!(file[..100].iter().all(|&b| b == 1));
        assert!(file[100..512].iter().all(|&b| b == 2));
        assert!(
            file[512..1024].iter().all(|&b| b == 0),
            "a hole where the sector was not written"
        );
        assert!(file[1024..].iter().all(|&b| b == 2));
    }

    #[test]
    fn pending_writes_can_reach_the_disk_out_of_order() {
        let mut disk = SimDisk::new();
        disk.create("log");
        disk.sync_dir();
        disk.append("log", b"a");
        disk.append("log", b"b");
        let seen = outcomes(&disk, "log", 300);
        // The second write without the first: a hole, then "b".
        assert!(seen.contains(&Some(vec![0, b'b'])), "{seen:?}");
        assert!(seen.contains(&Some(b"ab".to_vec())));
        assert!(seen.contains(&Some(Vec::new())));
    }
}

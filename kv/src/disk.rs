//! What the store asks of a disk: files by name in one directory, appends, truncation, and the
//! two syncs that make bytes and names durable. [`FsDisk`] is a real directory;
//! [`crate::simdisk::SimDisk`] is the simulated one the crash sweeps run on.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::simdisk::SimDisk;
use crate::StoreError;

/// Files by name in the store's directory.
pub trait Disk {
    /// Where it is, for messages.
    fn place(&self) -> String;
    /// Whether the directory holds no file.
    fn is_empty(&mut self) -> Result<bool, StoreError>;
    /// A file's bytes; `None` if there is no such file.
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Makes a new, empty file.
    fn create(&mut self, name: &str) -> Result<(), StoreError>;
    /// Writes `bytes` at the end of a file.
    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Cuts a file to `len` bytes.
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StoreError>;
    /// Renames a file, replacing `to` (durable once the directory is synced).
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError>;
    /// Makes a file's bytes durable.
    fn sync_file(&mut self, name: &str) -> Result<(), StoreError>;
    /// Makes the directory's names durable.
    fn sync_dir(&mut self) -> Result<(), StoreError>;
}

/// A real directory (made if missing); files stay open once used.
pub struct FsDisk {
    dir: PathBuf,
    open: BTreeMap<String, File>,
}

impl FsDisk {
    /// The directory `dir`, made if missing.
    pub fn new(dir: &Path) -> Result<FsDisk, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(FsDisk {
            dir: dir.to_path_buf(),
            open: BTreeMap::new(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A second handle on file `name` (for syncing it from another thread).
    pub fn handle(&mut self, name: &str) -> Result<File, StoreError> {
        let path = self.dir.join(name);
        self.file(name)?.try_clone().map_err(io(&path))
    }

    fn file(&mut self, name: &str) -> Result<&mut File, StoreError> {
        let path = self.dir.join(name);
        if !self.open.contains_key(name) {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            self.open.insert(name.to_string(), file);
        }
        Ok(self.open.get_mut(name).expect("just opened"))
    }
}

/// An I/O error on `path`, as the store reports it.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Disk for FsDisk {
    fn place(&self) -> String {
        self.dir.display().to_string()
    }

    fn is_empty(&mut self) -> Result<bool, StoreError> {
        Ok(std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .next()
            .is_none())
    }

    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.dir.join(name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        Ok(Some(bytes))
    }

    fn create(&mut self, name: &str) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        File::create(&path).map_err(io(&path))?;
        self.open.remove(name);
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        self.file(name)?.write_all(bytes).map_err(io(&path))
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        self.file(name)?.set_len(len).map_err(io(&path))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        let path = self.dir.join(from);
        std::fs::rename(&path, self.dir.join(to)).map_err(io(&path))?;
        self.open.remove(from);
        self.open.remove(to);
        Ok(())
    }

    fn sync_file(&mut self, name: &str) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        self.file(name)?.sync_data().map_err(io(&path))
    }

    fn sync_dir(&mut self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

impl Disk for SimDisk {
    fn place(&self) -> String {
        "the simulated disk".into()
    }

    fn is_empty(&mut self) -> Result<bool, StoreError> {
        Ok(self.names().next().is_none())
    }

    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(SimDisk::read(self, name).map(<[u8]>::to_vec))
    }

    fn create(&mut self, name: &str) -> Result<(), StoreError> {
        SimDisk::create(self, name);
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        SimDisk::append(self, name, bytes);
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StoreError> {
        SimDisk::truncate(self, name, len as usize);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        SimDisk::rename(self, from, to);
        Ok(())
    }

    fn sync_file(&mut self, name: &str) -> Result<(), StoreError> {
        SimDisk::sync_file(self, name);
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), StoreError> {
        SimDisk::sync_dir(self);
        Ok(())
    }
}

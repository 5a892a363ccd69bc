//! An in-memory [`Storage`]: files as byte vectors, directories as names, and an honest model
//! of what survives a power cut, so engine logic can be tested without io_uring or a disk.
//!
//! What it models, and how strictly:
//! - **Alignment.** Writes are direct I/O: their offset and length must be multiples of the
//!   file's alignment (512 by default, the smallest [`crate::storage::DmaStorage`] reports; see
//!   [`MemoryStorage::with_alignment`]). A misaligned write fails with `EINVAL`, as `O_DIRECT`
//!   does, and writes nothing. Reads take any offset and length and see every write so far (the
//!   page cache), durable or not. Buffers from [`StorageFile::alloc_buffer`] start filled with
//!   `0xA5`, not zeros: their contents are unspecified.
//! - **File data.** Each file keeps what [`StorageFile::sync_data`] made durable and the writes
//!   since. A write reaches stable storage only at the next `sync_data` of that file.
//! - **Names.** Creating a file, [`Storage::rename`] and [`Storage::remove`] change what
//!   [`Storage::list`] and [`Storage::open`] see at once, but become durable only when
//!   [`Storage::sync_dir`] syncs the directory they changed (a rename across directories, when
//!   either is synced). An open file outlives its name, as an inode does.
//!   [`Storage::create_dir_all`] is durable when it returns (the trait promises that).
//! - **Power loss.** [`MemoryStorage::power_loss`] returns the storage as the next boot finds
//!   it: durable data and names only. [`MemoryStorage::power_loss_seeded`] also keeps, chosen by
//!   its seed, some of what was not yet durable, the way a disk's write cache and a journaling
//!   file system may: each 512-byte sector written since its file's last sync holds its durable
//!   bytes or the bytes of any one of those writes (sectors are atomic, never torn inside), and
//!   the directory changes not yet synced are kept up to a point (a prefix, in the order they
//!   were made). A file whose name did not survive is gone with its data.
//!
//! Everything runs at once but every file operation yields to the executor once, so tasks
//! interleave around I/O as they do on a real disk. It works on any executor; see
//! [`crate::executor::PlainExecutor`] for one without io_uring. The handle is cheap to clone
//! and every clone sees the same files; it is single-threaded, like a shard.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{EngineError, Result};
use crate::storage::{IoBuffer, Storage, StorageFile};

/// Power loss keeps or drops unsynced data in units of this many bytes (atomic sectors).
pub const SECTOR_BYTES: usize = 512;
/// What a fresh buffer holds: never rely on it.
const FRESH_BUFFER_BYTE: u8 = 0xA5;

/// Files and directories in memory, with durability tracked; see the [module docs](self).
#[derive(Clone)]
pub struct MemoryStorage {
    fs: Rc<RefCell<Fs>>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fs = self.fs.borrow();
        f.debug_struct("MemoryStorage")
            .field("alignment", &fs.alignment)
            .field("names", &fs.names.len())
            .field("unsynced_name_changes", &fs.journal.len())
            .finish()
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(u64),
}

/// A directory change not yet made durable by `sync_dir`.
#[derive(Clone, Debug)]
enum NameChange {
    Link {
        path: PathBuf,
        node: Node,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        node: Node,
    },
    Unlink {
        path: PathBuf,
        node: Node,
    },
}

impl NameChange {
    fn touches(&self, dir: &Path) -> bool {
        let parent_is = |p: &Path| p.parent() == Some(dir);
        match self {
            NameChange::Link { path, .. } | NameChange::Unlink { path, .. } => parent_is(path),
            NameChange::Rename { from, to, .. } => parent_is(from) || parent_is(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Node>) {
        match self {
            NameChange::Link { path, node } => {
                names.insert(path.clone(), *node);
            }
            NameChange::Rename { from, to, node } => {
                if names.get(from) == Some(node) {
                    names.remove(from);
                }
                names.insert(to.clone(), *node);
            }
            NameChange::Unlink { path, node } => {
                if names.get(path) == Some(node) {
                    names.remove(path);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What reads see: every write so far.
    data: Vec<u8>,
    /// What the last `sync_data` made durable.
    durable: Vec<u8>,
    /// Writes since then, in order: (offset, bytes).
    unsynced: Vec<(u64, Rc<[u8]>)>,
}

fn write_into(data: &mut Vec<u8>, pos: usize, bytes: &[u8]) {
    let end = pos + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[pos..end].copy_from_slice(bytes);
}

#[derive(Debug)]
struct Fs {
    alignment: usize,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// The names as they are now.
    names: BTreeMap<PathBuf, Node>,
    /// The names a power cut would leave (before any unsynced change is kept by luck).
    durable_names: BTreeMap<PathBuf, Node>,
    /// Name changes not yet durable, in the order they were made.
    journal: Vec<NameChange>,
}

fn errno(op: &'static str, path: &Path, errno: i32) -> EngineError {
    EngineError::io(op, path, io::Error::from_raw_os_error(errno))
}

impl Fs {
    fn new(alignment: usize) -> Self {
        let mut names = BTreeMap::new();
        names.insert(PathBuf::from("/"), Node::Dir);
        Self {
            alignment,
            inodes: HashMap::new(),
            next_inode: 1,
            durable_names: names.clone(),
            names,
            journal: Vec::new(),
        }
    }

    fn change(&mut self, change: NameChange) {
        change.apply(&mut self.names);
        self.journal.push(change);
    }

    fn parent_is_dir(&self, path: &Path) -> bool {
        path.parent()
            .is_some_and(|p| self.names.get(p) == Some(&Node::Dir))
    }

    /// The state after a power cut; `seed` keeps some of what was not durable (see the module
    /// docs), `None` keeps nothing of it.
    fn after_power_loss(&self, seed: Option<u64>) -> Fs {
        let mut rng = seed.map(Rng::new);
        let mut names = self.durable_names.clone();
        if let Some(rng) = &mut rng {
            let kept = rng.below(self.journal.len() as u64 + 1) as usize;
            for change in &self.journal[..kept] {
                change.apply(&mut names);
            }
        }
        // A name whose directory did not survive is gone with it.
        let mut surviving = BTreeMap::new();
        for (path, node) in &names {
            let parent_ok = match path.parent() {
                None => true,
                Some(parent) => surviving.get(parent) == Some(&Node::Dir),
            };
            if parent_ok {
                surviving.insert(path.clone(), *node);
            }
        }
        let mut inodes = HashMap::new();
        for node in surviving.values() {
            if let Node::File(id) = node {
                if let Some(inode) = self.inodes.get(id) {
                    let data = match &mut rng {
                        None => inode.durable.clone(),
                        Some(rng) => torn(inode, rng),
                    };
                    inodes.insert(
                        *id,
                        Inode {
                            durable: data.clone(),
                            data,
                            unsynced: Vec::new(),
                        },
                    );
                }
            }
        }
        Fs {
            alignment: self.alignment,
            inodes,
            next_inode: self.next_inode,
            durable_names: surviving.clone(),
            names: surviving,
            journal: Vec::new(),
        }
    }
}

/// A file's bytes after a power cut that kept, sector by sector, the durable bytes or those of
/// one of the writes since the last sync (chosen by `rng`).
fn torn(inode: &Inode, rng: &mut Rng) -> Vec<u8> {
    let mut versions: BTreeMap<u64, Vec<&[u8]>> = BTreeMap::new();
    for (pos, bytes) in &inode.unsynced {
        for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
            let at = pos / SECTOR_BYTES as u64 + i as u64;
            versions.entry(at).or_default().push(sector);
        }
    }
    let mut data = inode.durable.clone();
    for (sector, writes) in versions {
        let pick = rng.below(writes.len() as u64 + 1) as usize;
        if pick > 0 {
            write_into(&mut data, sector as usize * SECTOR_BYTES, writes[pick - 1]);
        }
    }
    data
}

/// splitmix64: small, seeded, good enough to choose what a crash keeps.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x6a09_e667_f3bc_c908)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Returns `Pending` once (after waking itself): an I/O operation lets other tasks run.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

impl MemoryStorage {
    /// An empty file system (just `/`) whose files take writes aligned to 512 bytes.
    pub fn new() -> Self {
        Self::with_alignment(SECTOR_BYTES)
    }

    /// An empty file system whose files require `alignment` (a power of two, at least 512:
    /// what a device's logical block size can be).
    ///
    /// # Panics
    /// If `alignment` is not a power of two of at least 512.
    pub fn with_alignment(alignment: usize) -> Self {
        assert!(
            alignment.is_power_of_two() && alignment >= SECTOR_BYTES,
            "alignment must be a power of two of at least {SECTOR_BYTES}"
        );
        Self {
            fs: Rc::new(RefCell::new(Fs::new(alignment))),
        }
    }

    /// The storage as it would be found after a power cut now: only what was made durable.
    /// This storage is unchanged (a shard still using it may go on; the copy is separate).
    pub fn power_loss(&self) -> MemoryStorage {
        Self {
            fs: Rc::new(RefCell::new(self.fs.borrow().after_power_loss(None))),
        }
    }

    /// Like [`MemoryStorage::power_loss`], but some of what was not durable survives too, as
    /// `seed` chooses: per sector, the durable bytes or any one unsynced write of it; a prefix
    /// of the unsynced directory changes.
    pub fn power_loss_seeded(&self, seed: u64) -> MemoryStorage {
        Self {
            fs: Rc::new(RefCell::new(self.fs.borrow().after_power_loss(Some(seed)))),
        }
    }

    /// The bytes of the file at `path` as a read would see them now, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs.borrow();
        match fs.names.get(path)? {
            Node::File(id) => fs.inodes.get(id).map(|i| i.data.clone()),
            Node::Dir => None,
        }
    }

    /// Overwrites bytes of the file at `path`, durably and at once, bypassing every check: for
    /// tests that damage what a crash left (a bad sector, a stray write).
    ///
    /// # Panics
    /// If there is no file at `path`.
    pub fn damage(&self, path: &Path, offset: u64, bytes: &[u8]) {
        let mut fs = self.fs.borrow_mut();
        let Some(Node::File(id)) = fs.names.get(path).copied() else {
            panic!("no file at {}", path.display());
        };
        let inode = fs.inodes.entry(id).or_default();
        write_into(&mut inode.data, offset as usize, bytes);
        write_into(&mut inode.durable, offset as usize, bytes);
    }

    /// Every name (files and directories) as it is now, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.fs.borrow().names.keys().cloned().collect()
    }

    /// Bytes written but not yet made durable by a sync, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        let fs = self.fs.borrow();
        fs.inodes
            .values()
            .flat_map(|i| i.unsynced.iter().map(|(_, b)| b.len() as u64))
            .sum()
    }
}

/// A buffer of a [`MemoryFile`]: plain memory; alignment is checked at the write.
#[derive(Debug)]
pub struct MemoryBuffer {
    bytes: Vec<u8>,
}

impl IoBuffer for MemoryBuffer {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn truncate(&mut self, len: usize) {
        self.bytes.truncate(len);
    }
}

/// An open file of a [`MemoryStorage`]: it names its inode, so it outlives a rename or removal.
#[derive(Debug)]
pub struct MemoryFile {
    fs: Rc<RefCell<Fs>>,
    inode: u64,
    path: PathBuf,
    alignment: usize,
}

impl StorageFile for MemoryFile {
    type Buffer = MemoryBuffer;
    type ReadBuf = Vec<u8>;

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn alloc_buffer(&self, len: usize) -> Self::Buffer {
        MemoryBuffer {
            bytes: vec![FRESH_BUFFER_BYTE; len],
        }
    }

    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> Result<()> {
        let len = buf.bytes().len();
        let align = self.alignment;
        if pos % align as u64 != 0 || len % align != 0 {
            return Err(EngineError::io(
                "write",
                &self.path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "O_DIRECT write of {len} bytes at offset {pos} is not aligned to \
                         {align} bytes (EINVAL)"
                    ),
                ),
            ));
        }
        yield_once().await;
        let bytes: Rc<[u8]> = buf.bytes().into();
        let mut fs = self.fs.borrow_mut();
        let inode = fs.inodes.entry(self.inode).or_default();
        write_into(&mut inode.data, pos as usize, &bytes);
        inode.unsynced.push((pos, bytes));
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Self::ReadBuf> {
        yield_once().await;
        let fs = self.fs.borrow();
        let data = fs.inodes.get(&self.inode).map_or(&[][..], |i| &i.data);
        let start = (pos as usize).min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data[start..end].to_vec())
    }

    async fn sync_data(&self) -> Result<()> {
        yield_once().await;
        let mut fs = self.fs.borrow_mut();
        let inode = fs.inodes.entry(self.inode).or_default();
        for (pos, bytes) in std::mem::take(&mut inode.unsynced) {
            write_into(&mut inode.durable, pos as usize, &bytes);
        }
        Ok(())
    }

    async fn len(&self) -> Result<u64> {
        let fs = self.fs.borrow();
        Ok(fs
            .inodes
            .get(&self.inode)
            .map_or(0, |i| i.data.len() as u64))
    }

    /// Modelled as a write of zeros past the current end: until the next `sync_data`, a power
    /// cut may keep any of its sectors or none (the file then ends where they stop).
    async fn allocate(&self, len: u64) -> Result<()> {
        yield_once().await;
        let mut fs = self.fs.borrow_mut();
        let inode = fs.inodes.entry(self.inode).or_default();
        let old = inode.data.len();
        if (len as usize) > old {
            let zeros: Rc<[u8]> = vec![0u8; len as usize - old].into();
            write_into(&mut inode.data, old, &zeros);
            inode.unsynced.push((old as u64, zeros));
        }
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for MemoryStorage {
    type File = MemoryFile;

    async fn open(&self, path: &Path, create: bool) -> Result<Self::File> {
        yield_once().await;
        let mut fs = self.fs.borrow_mut();
        let inode = match fs.names.get(path).copied() {
            Some(Node::File(id)) => id,
            Some(Node::Dir) => return Err(errno("open", path, libc::EISDIR)),
            None if !create => return Err(errno("open", path, libc::ENOENT)),
            None if !fs.parent_is_dir(path) => return Err(errno("open", path, libc::ENOENT)),
            None => {
                let id = fs.next_inode;
                fs.next_inode += 1;
                fs.inodes.insert(id, Inode::default());
                fs.change(NameChange::Link {
                    path: path.to_path_buf(),
                    node: Node::File(id),
                });
                id
            }
        };
        Ok(MemoryFile {
            fs: self.fs.clone(),
            inode,
            path: path.to_path_buf(),
            alignment: fs.alignment,
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        yield_once().await;
        let mut fs = self.fs.borrow_mut();
        let node = match fs.names.get(from).copied() {
            Some(Node::File(id)) => Node::File(id),
            // The engine renames files only; directories would need their subtrees moved.
            Some(Node::Dir) => return Err(errno("rename", from, libc::EISDIR)),
            None => return Err(errno("rename", from, libc::ENOENT)),
        };
        match fs.names.get(to) {
            Some(Node::Dir) => return Err(errno("rename", to, libc::EISDIR)),
            None if !fs.parent_is_dir(to) => return Err(errno("rename", to, libc::ENOENT)),
            _ => {}
        }
        fs.change(NameChange::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            node,
        });
        Ok(())
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        yield_once().await;
        let mut fs = self.fs.borrow_mut();
        match fs.names.get(path).copied() {
            Some(Node::File(id)) => {
                fs.change(NameChange::Unlink {
                    path: path.to_path_buf(),
                    node: Node::File(id),
                });
                Ok(())
            }
            Some(Node::Dir) => Err(errno("remove", path, libc::EISDIR)),
            None => Err(errno("remove", path, libc::ENOENT)),
        }
    }

    async fn sync_dir(&self, dir: &Path) -> Result<()> {
        yield_once().await;
        let mut fs = self.fs.borrow_mut();
        if fs.names.get(dir) != Some(&Node::Dir) {
            return Err(errno("open directory", dir, libc::ENOENT));
        }
        let journal = std::mem::take(&mut fs.journal);
        let mut kept = Vec::with_capacity(journal.len());
        for change in journal {
            if change.touches(dir) {
                change.apply(&mut fs.durable_names);
            } else {
                kept.push(change);
            }
        }
        fs.journal = kept;
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let mut fs = self.fs.borrow_mut();
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(path) = at {
            match fs.names.get(path) {
                Some(Node::Dir) => break,
                Some(Node::File(_)) => return Err(errno("create directory", path, libc::ENOTDIR)),
                None => missing.push(path.to_path_buf()),
            }
            at = path.parent();
        }
        if at.is_none() {
            // Not under `/`: a relative path, which this storage does not resolve.
            return Err(errno("create directory", dir, libc::ENOENT));
        }
        // Durable at once, as the trait promises (each new entry synced in its parent).
        for path in missing.into_iter().rev() {
            fs.names.insert(path.clone(), Node::Dir);
            fs.durable_names.insert(path, Node::Dir);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let fs = self.fs.borrow();
        match fs.names.get(dir) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => return Err(errno("list", dir, libc::ENOTDIR)),
            None => return Err(errno("list", dir, libc::ENOENT)),
        }
        Ok(fs
            .names
            .range(dir.to_path_buf()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, _)| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::PlainExecutor;

    fn buffer(file: &MemoryFile, len: usize, byte: u8) -> Rc<MemoryBuffer> {
        let mut buf = file.alloc_buffer(len);
        buf.bytes_mut().fill(byte);
        Rc::new(buf)
    }

    #[test]
    fn misaligned_writes_are_refused_like_o_direct() {
        let storage = MemoryStorage::with_alignment(4096);
        PlainExecutor::new().run(async {
            let file = storage.open(Path::new("/f"), true).await.unwrap();
            let error = file
                .write_at(buffer(&file, 4096, 1), 512)
                .await
                .unwrap_err();
            assert!(error.to_string().contains("not aligned to 4096"), "{error}");
            let error = file.write_at(buffer(&file, 100, 1), 0).await.unwrap_err();
            assert!(error.to_string().contains("EINVAL"), "{error}");
            assert_eq!(
                file.len().await.unwrap(),
                0,
                "a refused write writes nothing"
            );
            file.write_at(buffer(&file, 8192, 1), 4096).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 12288);
            // Reads take any offset and length, and stop at the end.
            assert_eq!(file.read_at(4095, 2).await.unwrap(), vec![0, 1]);
            assert_eq!(file.read_at(12287, 10).await.unwrap(), vec![1]);
        });
    }

    #[test]
    fn power_loss_keeps_only_what_was_synced() {
        let storage = MemoryStorage::new();
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        PlainExecutor::new().run(async {
            let a = storage.open(&dir.join("a"), true).await.unwrap();
            a.write_at(buffer(&a, 512, 1), 0).await.unwrap();
            a.sync_data().await.unwrap();
            storage.sync_dir(dir).await.unwrap();
            a.write_at(buffer(&a, 1024, 2), 0).await.unwrap();
            // Created and synced, but its name never was.
            let b = storage.open(&dir.join("b"), true).await.unwrap();
            b.write_at(buffer(&b, 512, 3), 0).await.unwrap();
            b.sync_data().await.unwrap();
            // Renamed, not synced: the old name survives.
            storage
                .rename(&dir.join("a"), &dir.join("c"))
                .await
                .unwrap();
        });
        assert_eq!(storage.list(dir).unwrap(), vec!["b", "c"]);
        let after = storage.power_loss();
        assert_eq!(after.list(dir).unwrap(), vec!["a"]);
        assert_eq!(after.contents(&dir.join("a")).unwrap(), vec![1; 512]);
        // The original is untouched.
        assert_eq!(storage.contents(&dir.join("c")).unwrap(), vec![2; 1024]);
    }

    #[test]
    fn a_seeded_power_loss_keeps_whole_sectors_of_unsynced_writes() {
        let storage = MemoryStorage::new();
        storage.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        PlainExecutor::new().run(async {
            let f = storage.open(path, true).await.unwrap();
            storage.sync_dir(Path::new("/d")).await.unwrap();
            f.write_at(buffer(&f, 4096, 1), 0).await.unwrap();
            f.sync_data().await.unwrap();
            f.write_at(buffer(&f, 4096, 2), 0).await.unwrap();
            f.write_at(buffer(&f, 2048, 3), 0).await.unwrap();
        });
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let data = storage.power_loss_seeded(seed).contents(path).unwrap();
            assert_eq!(data.len(), 4096);
            for (i, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                assert!(
                    sector.iter().all(|&b| b == sector[0]),
                    "a sector is never torn"
                );
                let allowed: &[u8] = if i < 4 { &[1, 2, 3] } else { &[1, 2] };
                assert!(allowed.contains(&sector[0]));
                seen.insert(sector[0]);
            }
        }
        assert_eq!(seen.len(), 3, "every version shows up under some seed");
        let clean = storage.power_loss().contents(path).unwrap();
        assert_eq!(clean, vec![1; 4096]);
    }

    #[test]
    fn names_follow_inodes_and_directories_must_exist() {
        let storage = MemoryStorage::new();
        PlainExecutor::new().run(async {
            assert!(storage.open(Path::new("/x/f"), true).await.is_err());
            storage.create_dir_all(Path::new("/x/y")).unwrap();
            let f = storage.open(Path::new("/x/y/f"), true).await.unwrap();
            storage.remove(Path::new("/x/y/f")).await.unwrap();
            // The open file still works; its name is gone.
            f.write_at(buffer(&f, 512, 9), 0).await.unwrap();
            assert_eq!(f.read_at(0, 1).await.unwrap(), vec![9]);
            assert!(storage.open(Path::new("/x/y/f"), false).await.is_err());
            assert!(storage.remove(Path::new("/x/y/f")).await.is_err());
            assert_eq!(storage.list(Path::new("/x")).unwrap(), vec!["y"]);
        });
        // Directories made by create_dir_all are durable.
        assert_eq!(
            storage.power_loss().paths(),
            vec![PathBuf::from("/"), "/x".into(), "/x/y".into()]
        );
    }
}

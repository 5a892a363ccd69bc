//! The disk edge: the one small trait through which the engine touches files.
//!
//! [`DmaStorage`] is the real implementation (glommio DMA files: `O_DIRECT` through io_uring),
//! optionally slowed to a simulated disk's speed ([`crate::throttle`]).
//! [`FaultyStorage`] wraps any storage and injects the failures a disk can produce (EIO on a
//! write or a sync, ENOSPC when a file is prepared) so tests exercise the real error paths on a
//! real file system. [`crate::memory_storage::MemoryStorage`] is the in-memory one, with
//! durability modelled, for tests without io_uring. Swapping the runtime later touches this
//! file and `executor.rs` (where tasks are spawned and timers run) only.
#![allow(async_fn_in_trait)] // single-threaded executors: futures are never sent across threads

use std::cell::Cell;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::throttle::{DiskThrottle, ThrottleLimits};

/// A buffer the disk can write from directly (aligned for `O_DIRECT`).
pub trait IoBuffer: 'static {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Shortens the buffer to `len` bytes (an aligned length): a write takes the whole buffer.
    fn truncate(&mut self, len: usize);
}

/// A file opened for direct I/O.
#[allow(clippy::len_without_is_empty)] // a file's length, not a collection's
pub trait StorageFile: 'static {
    type Buffer: IoBuffer;
    type ReadBuf: Deref<Target = [u8]> + 'static;

    /// Offsets and lengths of writes must be multiples of this.
    fn alignment(&self) -> usize;
    /// An aligned buffer of `len` bytes; its contents are unspecified.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes all of `buf` at `pos`; its length and `pos` are aligned. The caller keeps a
    /// reference so it can read what it wrote once the write completes.
    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> Result<()>;
    /// Reads `len` bytes at `pos` (any alignment); fewer only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> Result<Self::ReadBuf>;
    /// `fdatasync`: written data reaches stable storage.
    async fn sync_data(&self) -> Result<()>;
    async fn len(&self) -> Result<u64>;
    /// Makes the file `len` bytes long with every block reserved (`fallocate`): what was never
    /// written reads as zeros, and the next `sync_data` makes the length durable. A later write
    /// into such a block costs its first `fdatasync` a file-system journal commit.
    async fn allocate(&self, len: u64) -> Result<()>;
    fn path(&self) -> &Path;
}

/// Files and directories.
pub trait Storage: Clone + 'static {
    type File: StorageFile;

    /// Opens (optionally creating) a file for direct reads and writes.
    async fn open(&self, path: &Path, create: bool) -> Result<Self::File>;
    async fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    async fn remove(&self, path: &Path) -> Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> Result<()>;
    /// Creates `dir` and any missing parents, durably: each new directory's entry is synced
    /// in its parent before this returns (a shard's files are only as durable as their names).
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// File names in `dir`.
    fn list(&self, dir: &Path) -> Result<Vec<String>>;
}

impl IoBuffer for glommio::io::DmaBuffer {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
    fn truncate(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// Direct I/O through glommio (io_uring, `O_DIRECT`), optionally at a simulated disk's speed.
#[derive(Clone, Debug, Default)]
pub struct DmaStorage {
    throttle: Option<Arc<DiskThrottle>>,
    eio: Option<Arc<EioSwitch>>,
}

/// Tests only: a switch that, while on, makes every write and `fdatasync` of the storages
/// that share it fail with EIO, as a dying disk does — the node's own code path, thrown at
/// runtime (the kernel here has no device mapper for `dm-error`). Off, it costs one relaxed
/// load per write and sync; storages without one pay nothing.
#[derive(Debug, Default)]
pub struct EioSwitch {
    on: std::sync::atomic::AtomicBool,
}

impl EioSwitch {
    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn failing(switch: &Option<Arc<EioSwitch>>) -> bool {
        switch
            .as_ref()
            .is_some_and(|s| s.on.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl DmaStorage {
    /// Every read, write and sync of this storage's files waits as `throttle`'s simulated disk
    /// would take (shared by everything on the same directory).
    pub fn throttled(throttle: Arc<DiskThrottle>) -> Self {
        Self {
            throttle: Some(throttle),
            eio: None,
        }
    }

    /// Tests only: writes and syncs fail with EIO while `switch` is on ([`EioSwitch`]).
    pub fn with_eio_switch(mut self, switch: Arc<EioSwitch>) -> Self {
        self.eio = Some(switch);
        self
    }

    /// The simulated disk's limits, if this storage is throttled.
    pub fn throttle(&self) -> Option<ThrottleLimits> {
        self.throttle.as_ref().map(|t| t.limits())
    }
}

/// The options to open `path` for `O_DIRECT` writes with: write-only, unless the disk under it
/// has polled completion queues (`queue/io_poll` is 1).
///
/// Why: glommio decides whether a device's I/O goes to its polled (`IORING_SETUP_IOPOLL`) ring
/// by reading through the first direct file opened on it, and on Linux 6.x that read succeeds
/// on any disk, polled queues or not. Completions on that ring are only ever found by asking,
/// so the executor spins in `io_uring_enter` for as long as any write is in flight: on a disk
/// without poll queues (virtio, SCSI, NVMe without `nvme.poll_queues`) that cost ~1 ms of CPU
/// per message at one connection and put a 5 ms p99 on SMTP (bench/RESULTS.md, issue 20). A
/// write-only descriptor fails that probe, and glommio keeps the disk on its interrupt-driven
/// ring. Where polled queues exist, polling is what the operator set them up for: kept.
pub fn direct_write_options(path: &Path) -> glommio::io::OpenOptions {
    let mut options = glommio::io::OpenOptions::new();
    options.write(true);
    if polled_completions(path) {
        options.read(true);
    }
    options
}

/// Whether the block device holding `path` (or its directory, for a file not made yet) has
/// polled completion queues. Anything unreadable counts as no.
fn polled_completions(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .or_else(|_| std::fs::metadata(path.parent().unwrap_or_else(|| Path::new("."))));
    let Ok(meta) = meta else { return false };
    let dev = meta.dev();
    let device = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    // A partition's queue settings are its disk's, one directory up.
    [
        device.join("queue/io_poll"),
        device.join("../queue/io_poll"),
    ]
    .iter()
    .find_map(|file| std::fs::read_to_string(file).ok())
    .is_some_and(|value| value.trim() == "1")
}

/// An open segment: an `O_DIRECT` descriptor for writes and a buffered one for reads.
///
/// Reads use the buffered descriptor because glommio reads `O_DIRECT` files into registered
/// buffers (`IORING_OP_READ_FIXED`), which this kernel answers with EOPNOTSUPP; buffered reads
/// never take that path. They stay coherent: the kernel invalidates cached pages of a range
/// written with `O_DIRECT`, and the engine only reads records that are already durable.
/// Readahead is turned off: records are read one at a time, scans in 1 MiB chunks.
#[derive(Debug)]
pub struct DmaStorageFile {
    file: glommio::io::DmaFile,
    reader: glommio::io::BufferedFile,
    path: PathBuf,
    throttle: Option<Arc<DiskThrottle>>,
    eio: Option<Arc<EioSwitch>>,
}

impl DmaStorageFile {
    async fn admit(&self, bytes: usize) {
        if let Some(throttle) = &self.throttle {
            throttle.admit(bytes as u64).await;
        }
    }
}

fn glommio_io<T>(
    op: &'static str,
    path: &Path,
    r: std::result::Result<T, glommio::GlommioError<()>>,
) -> Result<T> {
    r.map_err(|e| EngineError::io(op, path, io::Error::from(e)))
}

impl StorageFile for DmaStorageFile {
    type Buffer = glommio::io::DmaBuffer;
    type ReadBuf = glommio::io::ReadResult;

    fn alignment(&self) -> usize {
        self.file.alignment() as usize
    }

    fn alloc_buffer(&self, len: usize) -> Self::Buffer {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> Result<()> {
        let len = buf.len();
        self.admit(len).await;
        if EioSwitch::failing(&self.eio) {
            return Err(injected("write", &self.path, libc::EIO));
        }
        let written = glommio_io("write", &self.path, self.file.write_rc_at(buf, pos).await)?;
        if written != len {
            return Err(EngineError::io(
                "write",
                &self.path,
                io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {written} of {len} bytes"),
                ),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Self::ReadBuf> {
        self.admit(len).await;
        glommio_io("read", &self.path, self.reader.read_at(pos, len).await)
    }

    async fn sync_data(&self) -> Result<()> {
        self.admit(0).await;
        if EioSwitch::failing(&self.eio) {
            return Err(injected("fdatasync", &self.path, libc::EIO));
        }
        glommio_io("fdatasync", &self.path, self.file.fdatasync().await)
    }

    async fn len(&self) -> Result<u64> {
        glommio_io("stat", &self.path, self.file.file_size().await)
    }

    async fn allocate(&self, len: u64) -> Result<()> {
        glommio_io(
            "fallocate",
            &self.path,
            self.file.pre_allocate(len, false).await,
        )
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for DmaStorage {
    type File = DmaStorageFile;

    async fn open(&self, path: &Path, create: bool) -> Result<Self::File> {
        let file = direct_write_options(path)
            .create(create)
            .dma_open(path)
            .await;
        let file = glommio_io("open", path, file)?;
        let reader = glommio::io::OpenOptions::new()
            .read(true)
            .buffered_open(path)
            .await;
        let reader = glommio_io("open", path, reader)?;
        // Reads are of single records (or 1 MiB scan chunks): kernel readahead would read pages
        // the O_DIRECT writer is about to invalidate, more than doubling the bytes read.
        // SAFETY: plain syscall on a descriptor this function owns; no memory is passed.
        let advice = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&reader),
                0,
                0,
                libc::POSIX_FADV_RANDOM,
            )
        };
        if advice != 0 {
            tracing::debug!(path = %path.display(), errno = advice, "posix_fadvise(RANDOM) failed; reads keep readahead");
        }
        Ok(DmaStorageFile {
            file,
            reader,
            path: path.to_path_buf(),
            throttle: self.throttle.clone(),
            eio: self.eio.clone(),
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        glommio_io("rename", from, glommio::io::rename(from, to).await)
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        glommio_io("remove", path, glommio::io::remove(path).await)
    }

    async fn sync_dir(&self, dir: &Path) -> Result<()> {
        let handle = glommio_io(
            "open directory",
            dir,
            glommio::io::Directory::open(dir).await,
        )?;
        glommio_io("fsync directory", dir, handle.sync().await)?;
        glommio_io("close directory", dir, handle.close().await)
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        // The directories that do not exist yet, deepest first.
        let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io("create directory", dir, e))?;
        // Open-time only, so plain blocking calls: fsync each new directory's parent, from the
        // top down, so that no power cut can lose a directory that holds synced files.
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| EngineError::io("fsync directory", parent, e))?;
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io("list", dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| EngineError::io("list", dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
}

/// Which failures to inject; shared by every file of a [`FaultyStorage`].
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Syncs that still succeed before every later sync fails with EIO (`None`: never fail).
    pub syncs_before_eio: Cell<Option<u64>>,
    /// Writes that still succeed before every later write fails with EIO.
    pub writes_before_eio: Cell<Option<u64>>,
    /// Creating a file fails with ENOSPC while this is set (a full disk).
    pub disk_full: Cell<bool>,
}

impl FaultPlan {
    fn take(counter: &Cell<Option<u64>>) -> bool {
        match counter.get() {
            None => false,
            Some(0) => true,
            Some(n) => {
                counter.set(Some(n - 1));
                false
            }
        }
    }
}

/// Any storage with injected faults; everything not failed goes to the real disk.
#[derive(Clone, Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    pub plan: Rc<FaultPlan>,
}

impl<S: Storage> FaultyStorage<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Rc::new(FaultPlan::default()),
        }
    }
}

/// A file of a [`FaultyStorage`].
#[derive(Debug)]
pub struct FaultyFile<F> {
    inner: F,
    plan: Rc<FaultPlan>,
}

fn injected(op: &'static str, path: &Path, errno: i32) -> EngineError {
    EngineError::io(op, path, io::Error::from_raw_os_error(errno))
}

impl<F: StorageFile> StorageFile for FaultyFile<F> {
    type Buffer = F::Buffer;
    type ReadBuf = F::ReadBuf;

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
    fn alloc_buffer(&self, len: usize) -> Self::Buffer {
        self.inner.alloc_buffer(len)
    }
    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> Result<()> {
        if FaultPlan::take(&self.plan.writes_before_eio) {
            return Err(injected("write", self.path(), libc::EIO));
        }
        self.inner.write_at(buf, pos).await
    }
    async fn read_at(&self, pos: u64, len: usize) -> Result<Self::ReadBuf> {
        self.inner.read_at(pos, len).await
    }
    async fn sync_data(&self) -> Result<()> {
        if FaultPlan::take(&self.plan.syncs_before_eio) {
            return Err(injected("fdatasync", self.path(), libc::EIO));
        }
        self.inner.sync_data().await
    }
    async fn len(&self) -> Result<u64> {
        self.inner.len().await
    }
    async fn allocate(&self, len: u64) -> Result<()> {
        if self.plan.disk_full.get() {
            return Err(injected("fallocate", self.path(), libc::ENOSPC));
        }
        self.inner.allocate(len).await
    }
    fn path(&self) -> &Path {
        self.inner.path()
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    type File = FaultyFile<S::File>;

    async fn open(&self, path: &Path, create: bool) -> Result<Self::File> {
        if create && self.plan.disk_full.get() {
            return Err(injected("create", path, libc::ENOSPC));
        }
        Ok(FaultyFile {
            inner: self.inner.open(path, create).await?,
            plan: self.plan.clone(),
        })
    }
    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> Result<()> {
        self.inner.remove(path).await
    }
    async fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.inner.sync_dir(dir).await
    }
    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        self.inner.list(dir)
    }
}

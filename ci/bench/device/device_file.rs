//! The device limit: what the filesystem under the targets' files does with
//! 1 MiB O_DIRECT requests, no daemon in between. A file of the disks' size
//! next to theirs, written once fully (as every target is preconditioned),
//! then read and overwritten sequentially by `qd` threads each with one
//! `pread`/`pwrite` in flight, taking the next 1 MiB from a shared cursor:
//! the queue depth and order of the targets' sequential workloads. After a
//! write repetition `fdatasync`, untimed, as the targets' FLUSH.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::common::MB_BYTES;
use super::kit::rng::Rng;
use super::targets::{Limits, Sample};
use super::{FILL_BYTES, FILL_QD, Workload};

/// The name of the device limit in the table and the JSON.
pub const DEVICE: &str = "device";

/// A file opened with O_DIRECT on the targets' filesystem.
pub struct DeviceFile {
    file: File,
    size: u64,
    pub fill_mbps: Option<f64>,
}

impl DeviceFile {
    /// Creates `size` bytes at `path` opened with O_DIRECT; `None` (with
    /// a message) where the filesystem refuses O_DIRECT.
    pub fn create(path: &Path, size: u64) -> Option<Self> {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match opened {
            Ok(file) => {
                file.set_len(size).expect("size the device file");
                Some(DeviceFile {
                    file,
                    size,
                    fill_mbps: None,
                })
            }
            Err(error) => {
                eprintln!("device bench: no O_DIRECT at {}: {error}", path.display());
                None
            }
        }
    }

    /// Writes the whole file once (1 MiB, `FILL_QD` threads) and syncs it;
    /// MB/s.
    pub fn precondition(&mut self) {
        let blocks = self.size / FILL_BYTES as u64;
        let start = Instant::now();
        let done = self.transfer(true, 0, blocks, FILL_QD, None);
        self.file.sync_data().expect("fdatasync the device file");
        let seconds = start.elapsed().as_secs_f64();
        self.fill_mbps = Some((done * FILL_BYTES as u64) as f64 / seconds / MB_BYTES);
    }

    /// One repetition of `workload`, if it is one the device limit is
    /// measured for (1 MiB sequential).
    pub fn run(&self, workload: &Workload, limits: &Limits, rng: &mut Rng) -> Option<Sample> {
        if workload.random || workload.block != FILL_BYTES || workload.queues != 1 {
            return None;
        }
        let blocks = self.size / FILL_BYTES as u64;
        let cap = workload
            .write
            .then_some(limits.write_cap / FILL_BYTES as u64);
        let start = Instant::now();
        let deadline = start + limits.duration;
        let first = rng.below(blocks);
        let done = self.transfer(
            workload.write,
            first,
            cap.unwrap_or(u64::MAX),
            workload.qd,
            Some(deadline),
        );
        let elapsed_s = start.elapsed().as_secs_f64();
        let flush_s = workload.write.then(|| {
            let start = Instant::now();
            self.file.sync_data().expect("fdatasync the device file");
            start.elapsed().as_secs_f64()
        });
        Some(Sample::new(
            done,
            done * FILL_BYTES as u64,
            elapsed_s,
            flush_s,
            None,
        ))
    }

    /// `threads` threads move 1 MiB blocks sequentially from block `first`
    /// (wrapping), `count` of them or until `deadline`; returns the blocks
    /// moved.
    fn transfer(
        &self,
        write: bool,
        first: u64,
        count: u64,
        threads: usize,
        deadline: Option<Instant>,
    ) -> u64 {
        let blocks = self.size / FILL_BYTES as u64;
        let next = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let (next, done) = (&next, &done);
                scope.spawn(move || {
                    let mut buffer = AlignedBlock::new();
                    Rng(0x5eed ^ thread as u64).fill(buffer.as_mut_slice());
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count || deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let offset = (first + n) % blocks * FILL_BYTES as u64;
                        let result = if write {
                            self.file.write_all_at(buffer.as_mut_slice(), offset)
                        } else {
                            self.file.read_exact_at(buffer.as_mut_slice(), offset)
                        };
                        result.expect("O_DIRECT transfer on the device file");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        done.into_inner()
    }
}

/// One 1 MiB buffer aligned to 4 KiB, as O_DIRECT needs.
struct AlignedBlock {
    ptr: std::ptr::NonNull<u8>,
}

impl AlignedBlock {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(FILL_BYTES, 4096) {
        Ok(layout) => layout,
        Err(_) => panic!("1 MiB aligned to 4 KiB is a valid layout"),
    };

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        let ptr = std::ptr::NonNull::new(ptr)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT));
        AlignedBlock { ptr }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to FILL_BYTES initialised bytes owned by
        // `self` until drop; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), FILL_BYTES) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::LAYOUT) }
    }
}

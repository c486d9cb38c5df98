//! The crypto thread pool: a fixed set of threads that transforms large
//! buffers in parallel, chunk by chunk.
//!
//! A buffer no larger than one chunk is transformed inline by the caller: a
//! thread hand-off costs microseconds, more than encrypting a few KiB.

use super::xts::{DataUnit, Tweak, XtsCipher};
use crate::limits::{CRYPTO_CHUNK_BYTES_DEFAULT, CRYPTO_CHUNK_BYTES_MIN};
use crate::sync::{IntoInnerOrRecover, LockOrRecover};

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The chunk size is below the minimum or not a multiple of 4 KiB.
    #[error(
        "chunk size {chunk_bytes} B must be a multiple of 4096 and at least {CRYPTO_CHUNK_BYTES_MIN}"
    )]
    BadChunkSize {
        /// The size asked for.
        chunk_bytes: usize,
    },
    /// The operating system refused to start the threads.
    #[error("cannot start crypto threads: {0}")]
    Spawn(String),
}

/// A fixed pool of crypto threads and the chunk size it cuts buffers into.
pub struct CryptoPool {
    threads: rayon::ThreadPool,
    thread_count: usize,
    chunk_bytes: usize,
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoPool")
            .field("thread_count", &self.thread_count)
            .field("chunk_bytes", &self.chunk_bytes)
            .finish()
    }
}

impl CryptoPool {
    /// A pool of `thread_count` threads (0 = one per detected CPU) cutting
    /// buffers into chunks of `chunk_bytes`.
    pub fn new(thread_count: usize, chunk_bytes: usize) -> Result<Self, PoolError> {
        if chunk_bytes < CRYPTO_CHUNK_BYTES_MIN || !chunk_bytes.is_multiple_of(4096) {
            return Err(PoolError::BadChunkSize { chunk_bytes });
        }
        let thread_count = if thread_count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            thread_count
        };
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(thread_count)
            .thread_name(|index| format!("lsvblk-crypto-{index}"))
            .build()
            .map_err(|e| PoolError::Spawn(e.to_string()))?;
        Ok(Self {
            threads,
            thread_count,
            chunk_bytes,
        })
    }

    /// A pool with one thread per CPU and 512 KiB chunks.
    pub fn with_defaults() -> Result<Self, PoolError> {
        Self::new(0, CRYPTO_CHUNK_BYTES_DEFAULT)
    }

    /// Threads in the pool.
    pub fn thread_count(&self) -> usize {
        self.thread_count
    }

    /// Bytes per chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Encrypts `buf` in place (see [`XtsCipher::encrypt`]), in parallel when
    /// it is larger than one chunk.
    pub fn encrypt(&self, cipher: &XtsCipher, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.run(buf, unit, first, |chunk, tweak| {
            cipher.encrypt(chunk, unit, tweak)
        });
    }

    /// Decrypts `buf` in place (see [`XtsCipher::decrypt`]), in parallel when
    /// it is larger than one chunk.
    pub fn decrypt(&self, cipher: &XtsCipher, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.run(buf, unit, first, |chunk, tweak| {
            cipher.decrypt(chunk, unit, tweak)
        });
    }

    /// Like [`CryptoPool::run`], with a side table cut in lockstep with the
    /// buffer: `side_per_unit` bytes per data unit (a block checksum, say), so
    /// each chunk is checksummed or verified while it is hot in cache. Stops
    /// at the first error a chunk returns.
    pub fn try_run_with_side<E: Send>(
        &self,
        buf: &mut [u8],
        side: &mut [u8],
        side_per_unit: usize,
        unit: DataUnit,
        first: Tweak,
        transform: impl Fn(&mut [u8], &mut [u8], Tweak) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        assert_eq!(
            side.len(),
            buf.len() / unit.bytes() * side_per_unit,
            "side table size"
        );
        // Chunks must hold whole data units (4096 is a multiple of 512 and of
        // every unit we use; round down for odd test units).
        let chunk_bytes = (self.chunk_bytes / unit.bytes()).max(1) * unit.bytes();
        if buf.len() <= chunk_bytes {
            return transform(buf, side, first);
        }
        let units_per_chunk = chunk_bytes / unit.bytes();
        let side_chunk = units_per_chunk * side_per_unit;
        // The first error only; a panicking chunk cannot leave the slot
        // half set, so a poisoned slot is still read.
        let failure: std::sync::Mutex<Option<E>> = std::sync::Mutex::new(None);
        let run_one = |index: usize, chunk: &mut [u8], side: &mut [u8]| {
            if let Err(error) = transform(
                chunk,
                side,
                first.add_units((index * units_per_chunk) as u64),
            ) {
                failure.lock_or_recover().get_or_insert(error);
            }
        };
        let mut pieces = buf
            .chunks_mut(chunk_bytes)
            .zip(side.chunks_mut(side_chunk))
            .enumerate();
        let (_, (first_chunk, first_side)) = pieces.next().expect("more than one chunk");
        // The caller does the first chunk itself instead of sleeping while
        // the pool works: on a small machine that is a whole core back.
        self.threads.in_place_scope(|scope| {
            for (index, (chunk, side)) in pieces {
                let run_one = &run_one;
                scope.spawn(move |_| run_one(index, chunk, side));
            }
            run_one(0, first_chunk, first_side);
        });
        match failure.into_inner_or_recover() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Runs `transform` over `buf`: inline for one chunk or less, otherwise
    /// over chunks on the pool. Each chunk starts on a data-unit boundary and
    /// gets the tweak of its first unit.
    pub fn run(
        &self,
        buf: &mut [u8],
        unit: DataUnit,
        first: Tweak,
        transform: impl Fn(&mut [u8], Tweak) + Sync,
    ) {
        // One dummy side byte per data unit lets `run` share the chunking.
        let mut side = vec![0u8; buf.len() / unit.bytes()];
        let done: Result<(), ()> =
            self.try_run_with_side(buf, &mut side, 1, unit, first, |chunk, _, tweak| {
                transform(chunk, tweak);
                Ok(())
            });
        debug_assert!(done.is_ok());
    }
}

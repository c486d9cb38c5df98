//! A per-block version model and the verified load generator built on it:
//! a write of a 4 KiB block stores a pattern derived from (seed, block, new
//! version), a read must return exactly the pattern of the block's last
//! acknowledged write. Never two requests on one block in flight at once,
//! so the expected data is exact at any queue depth.

use std::time::{Duration, Instant};

use super::blkio::{BlkClient, completions};
use super::rng::Rng;

/// The block: the unit of a version.
pub const BLOCK: usize = 4096;
/// Preconditioning and whole-disk checks: request size and queue depth.
pub const BIG_BYTES: usize = 1 << 20;
/// Requests in flight while preconditioning and checking.
pub const BIG_QD: usize = 8;
/// Length of the windows whose IOPS a [`Phase`] keeps.
const WINDOW: Duration = Duration::from_millis(500);
/// First word of every block written here.
const MAGIC: u64 = 0x6c73_7662_726f_7421;
/// Mismatches described in the output (the count is always exact).
pub const MISMATCH_NOTES_MAX: usize = 10;

/// The data of `block` at `version`: magic, block number, version, then
/// words derived from all three and `seed`.
pub fn versioned_block(buf: &mut [u8], seed: u64, block: u64, version: u32) {
    let base = Rng(seed ^ block.rotate_left(20) ^ u64::from(version)).next();
    for (index, word) in buf.chunks_exact_mut(8).enumerate() {
        let value = match index {
            0 => MAGIC,
            1 => block,
            2 => u64::from(version),
            i => base.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        };
        word.copy_from_slice(&value.to_le_bytes());
    }
}

/// Whether `buf` holds `block` at `version`; if not, what it holds.
pub fn check_versioned(buf: &[u8], seed: u64, block: u64, version: u32) -> Result<(), String> {
    let mut want = [0u8; BLOCK];
    versioned_block(&mut want, seed, block, version);
    if buf == want {
        return Ok(());
    }
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let found = if word(0) == MAGIC {
        format!("block {} version {}", word(1), word(2))
    } else if buf.iter().all(|b| *b == 0) {
        "zeros".to_owned()
    } else {
        "no versioned block".to_owned()
    };
    Err(format!(
        "block {block}: want version {version}, found {found}"
    ))
}

/// [`versioned_block`] and [`check_versioned`] tell versions, blocks,
/// seeds and single bytes apart; panics if not.
pub fn self_test() {
    let mut buf = [0u8; BLOCK];
    versioned_block(&mut buf, 7, 42, 3);
    assert!(check_versioned(&buf, 7, 42, 3).is_ok());
    assert!(check_versioned(&buf, 7, 42, 4).is_err());
    assert!(check_versioned(&buf, 7, 43, 3).is_err());
    assert!(check_versioned(&buf, 8, 42, 3).is_err());
    buf[BLOCK - 1] ^= 1;
    assert!(check_versioned(&buf, 7, 42, 3).is_err());
}

/// One request in flight.
#[derive(Clone, Copy)]
struct Request {
    block: u64,
    write: bool,
    /// The version a write stores.
    version: u32,
}

/// Completions of one run of the load.
#[derive(Default)]
pub struct Phase {
    /// Requests completed.
    pub ops: u64,
    /// From the first submission to the last completion, seconds.
    pub elapsed_s: f64,
    /// IOPS of each full 0.5 s window.
    pub windows: Vec<f64>,
}

impl Phase {
    /// Requests completed per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed_s
    }
}

/// A whole-disk check.
pub struct Check {
    /// Blocks read and compared.
    pub verified: u64,
    /// Reads that failed.
    pub io_errors: u64,
    /// Blocks that did not hold their last acknowledged write.
    pub mismatches: u64,
}

/// The verified load: a client on queue 0 and the model of its disk.
pub struct VerifiedLoad {
    /// The client (taken out to reconnect to a restarted daemon).
    pub client: Option<BlkClient>,
    /// Who runs the load, for messages (`rotation bench`).
    name: String,
    qd: usize,
    read_pct: u64,
    seed: u64,
    rng: Rng,
    /// Version of each block's last acknowledged write.
    versions: Vec<u32>,
    /// Blocks with a request in flight.
    busy: Vec<bool>,
    /// Blocks whose content is unknown after a failed write.
    unknown: Vec<bool>,
    /// Per slot, the request in flight there.
    slots: Vec<Option<Request>>,
    /// Foreground requests that failed.
    pub io_errors: u64,
    /// Foreground reads that did not return the last acknowledged write.
    pub mismatches: u64,
    /// The first [`MISMATCH_NOTES_MAX`] mismatches, described.
    pub mismatch_notes: Vec<String>,
    /// Foreground reads compared with the model.
    pub verified_reads: u64,
    /// Foreground writes acknowledged.
    pub writes_done: u64,
}

impl VerifiedLoad {
    /// A load of `qd` requests in flight, `read_pct` % of them reads, over
    /// every block of `client`'s disk, with a seed from the clock. Its
    /// client's region must hold `max(qd * BLOCK, BIG_QD * BIG_BYTES)`.
    pub fn new(name: &str, client: BlkClient, qd: usize, read_pct: u64) -> Self {
        let blocks = (client.capacity() / BLOCK as u64) as usize;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        VerifiedLoad {
            client: Some(client),
            name: name.to_owned(),
            qd,
            read_pct,
            seed,
            rng: Rng(seed.rotate_left(32)),
            versions: vec![0; blocks],
            busy: vec![false; blocks],
            unknown: vec![false; blocks],
            slots: vec![None; qd],
            io_errors: 0,
            mismatches: 0,
            mismatch_notes: Vec::new(),
            verified_reads: 0,
            writes_done: 0,
        }
    }

    fn client(&mut self) -> &mut BlkClient {
        self.client.as_mut().expect("connected")
    }

    fn note_mismatch(&mut self, note: String) {
        self.mismatches += 1;
        if self.mismatch_notes.len() < MISMATCH_NOTES_MAX {
            eprintln!("{}: MISMATCH: {note}", self.name);
            self.mismatch_notes.push(note);
        }
    }

    /// Writes every block once (version 0: 1 MiB requests at QD 8), then
    /// FLUSH.
    pub fn precondition(&mut self) {
        let seed = self.seed;
        let capacity = self.client().capacity();
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(BIG_QD);
        let submit = |client: &mut BlkClient, slot: usize, offset: u64| {
            let buf = client.slot(slot, BIG_BYTES);
            for (i, block) in buf.chunks_exact_mut(BLOCK).enumerate() {
                versioned_block(block, seed, offset / BLOCK as u64 + i as u64, 0);
            }
            client.submit(0, true, slot, offset, BIG_BYTES);
        };
        assert_eq!(capacity % BIG_BYTES as u64, 0, "size is whole MiB");
        let client = self.client.as_mut().expect("connected");
        for slot in 0..BIG_QD {
            if next < capacity {
                submit(client, slot, next);
                next += BIG_BYTES as u64;
                in_flight += 1;
            }
        }
        while in_flight > 0 {
            for (slot, ret) in client.reap(0, &mut completions) {
                assert!(ret >= 0, "preconditioning write failed: {ret}");
                in_flight -= 1;
                if next < capacity {
                    submit(client, slot, next);
                    next += BIG_BYTES as u64;
                    in_flight += 1;
                }
            }
        }
        self.flush();
    }

    /// FLUSH, waited for.
    pub fn flush(&mut self) {
        if let Err(error) = self.client().flush(0) {
            panic!("FLUSH failed: {error:?}");
        }
    }

    /// Submits a random request in `slot`.
    fn submit(&mut self, slot: usize) {
        let blocks = self.versions.len() as u64;
        let block = loop {
            let block = self.rng.below(blocks);
            if !self.busy[block as usize] {
                break block;
            }
        };
        let write = self.rng.below(100) >= self.read_pct;
        let version = self.versions[block as usize].wrapping_add(u32::from(write));
        self.busy[block as usize] = true;
        self.slots[slot] = Some(Request {
            block,
            write,
            version,
        });
        let seed = self.seed;
        let client = self.client.as_mut().expect("connected");
        if write {
            versioned_block(client.slot(slot, BLOCK), seed, block, version);
        }
        client.submit(0, write, slot, block * BLOCK as u64, BLOCK);
    }

    /// Accounts for the completion of the request in `slot`.
    fn complete(&mut self, slot: usize, ret: i32) {
        let request = self.slots[slot].take().expect("a request in the slot");
        let index = request.block as usize;
        self.busy[index] = false;
        if ret < 0 {
            self.io_errors += 1;
            eprintln!(
                "{}: I/O ERROR {ret} ({} block {})",
                self.name,
                if request.write { "write" } else { "read" },
                request.block
            );
            if request.write {
                self.unknown[index] = true;
            }
            return;
        }
        if request.write {
            self.versions[index] = request.version;
            self.unknown[index] = false;
            self.writes_done += 1;
        } else if !self.unknown[index] {
            let seed = self.seed;
            let client = self.client.as_mut().expect("connected");
            let result = check_versioned(
                client.slot(slot, BLOCK),
                seed,
                request.block,
                request.version,
            );
            self.verified_reads += 1;
            if let Err(note) = result {
                self.note_mismatch(format!("foreground read: {note}"));
            }
        }
    }

    /// Keeps `qd` requests in flight until `done()` (asked after each batch
    /// of completions), then lets the queue drain; counts every completion.
    pub fn run(&mut self, done: &mut dyn FnMut() -> bool) -> Phase {
        let mut completions = completions(self.qd);
        let start = Instant::now();
        let mut window_start = start;
        let mut window_ops = 0u64;
        let mut phase = Phase::default();
        for slot in 0..self.qd {
            self.submit(slot);
        }
        let mut in_flight = self.qd;
        let mut stopping = false;
        while in_flight > 0 {
            let reaped = self.client().reap(0, &mut completions);
            stopping = stopping || done();
            for (slot, ret) in reaped {
                self.complete(slot, ret);
                phase.ops += 1;
                window_ops += 1;
                if stopping {
                    in_flight -= 1;
                } else {
                    self.submit(slot);
                }
            }
            let now = Instant::now();
            if now - window_start >= WINDOW {
                phase
                    .windows
                    .push(window_ops as f64 / (now - window_start).as_secs_f64());
                window_start = now;
                window_ops = 0;
            }
        }
        phase.elapsed_s = start.elapsed().as_secs_f64();
        phase
    }

    /// Reads the whole disk (1 MiB, QD 8) and checks every block.
    pub fn verify_disk(&mut self) -> Check {
        let seed = self.seed;
        let mut result = Check {
            verified: 0,
            io_errors: 0,
            mismatches: 0,
        };
        let mut notes = Vec::new();
        let name = self.name.clone();
        let client = self.client.as_mut().expect("connected");
        let capacity = client.capacity();
        let mut offsets = [0u64; BIG_QD];
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(BIG_QD);
        for (slot, offset) in offsets.iter_mut().enumerate() {
            if next < capacity {
                *offset = next;
                client.submit(0, false, slot, next, BIG_BYTES);
                next += BIG_BYTES as u64;
                in_flight += 1;
            }
        }
        while in_flight > 0 {
            for (slot, ret) in client.reap(0, &mut completions) {
                in_flight -= 1;
                if ret < 0 {
                    result.io_errors += 1;
                    eprintln!("{name}: I/O ERROR {ret} (check read at {})", offsets[slot]);
                } else {
                    let first = offsets[slot] / BLOCK as u64;
                    let buf = client.slot(slot, BIG_BYTES);
                    for (i, data) in buf.chunks_exact(BLOCK).enumerate() {
                        let block = first + i as u64;
                        if self.unknown[block as usize] {
                            continue;
                        }
                        result.verified += 1;
                        let version = self.versions[block as usize];
                        if let Err(note) = check_versioned(data, seed, block, version) {
                            result.mismatches += 1;
                            notes.push(format!("whole-disk check: {note}"));
                        }
                    }
                }
                if next < capacity {
                    offsets[slot] = next;
                    client.submit(0, false, slot, next, BIG_BYTES);
                    next += BIG_BYTES as u64;
                    in_flight += 1;
                }
            }
        }
        for note in notes.into_iter().take(MISMATCH_NOTES_MAX) {
            eprintln!("{name}: MISMATCH: {note}");
            if self.mismatch_notes.len() < MISMATCH_NOTES_MAX {
                self.mismatch_notes.push(note);
            }
        }
        result
    }
}

//! Several batches of one queue in flight at once (`--io direct`, where a
//! queue's worker hands each batch to a thread of its own and takes the
//! next requests meanwhile), checked against a per-block version model.
//!
//! Every 4 KiB block written holds its block number and a version (a
//! counter over all writes), so a read tells which write each block came
//! from. Writes never overlap a write in flight (two overlapping writes in
//! flight may land in either order, which the model does not follow), but
//! reads freely overlap writes in flight: each block a read returns must be
//! the version completed before the read was submitted, or one a write in
//! flight during the read put there; never an error, never anything else.

use super::kit::blkio::{BlkClient, completions};
use super::kit::rng::Rng;
use super::{MIB, setup};

const BLOCK: usize = 4096;
/// Requests move at most this much; the 16 MiB region holds 64 slots.
const SLOT: usize = 256 * 1024;
const QD: usize = 64;

/// What the disk holds, block by block, as versions (0: never written).
struct Model {
    stable: Vec<u64>,
    /// The version a write in flight puts in the block.
    writing: Vec<Option<u64>>,
    next_version: u64,
}

/// A request in flight, in its slot.
enum InFlight {
    Write {
        first: usize,
        blocks: usize,
        version: u64,
    },
    Read {
        first: usize,
        allowed: Vec<Vec<u64>>,
    },
}

fn block_bytes(block: usize, version: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0; BLOCK];
    }
    let mut unit = [0u8; 16];
    unit[..8].copy_from_slice(&(block as u64).to_le_bytes());
    unit[8..].copy_from_slice(&version.to_le_bytes());
    unit.repeat(BLOCK / 16)
}

/// The version `bytes` (block `block`) holds, or why it is none.
fn version_of(block: usize, bytes: &[u8]) -> Result<u64, String> {
    if bytes.iter().all(|&b| b == 0) {
        return Ok(0);
    }
    let unit = &bytes[..16];
    if bytes.chunks(16).any(|chunk| chunk != unit) {
        return Err(format!("block {block}: torn or garbage contents"));
    }
    let named = u64::from_le_bytes(unit[..8].try_into().unwrap());
    if named != block as u64 {
        return Err(format!("block {block}: holds block {named}'s data"));
    }
    Ok(u64::from_le_bytes(unit[8..].try_into().unwrap()))
}

/// Runs `requests` random reads and writes on one queue at depth `QD`
/// over a disk of `blocks` blocks, writes of up to `write_blocks` blocks
/// and reads of up to `read_blocks`; checks each read against the model,
/// then the whole disk. Returns how many reads overlapped a write in
/// flight.
fn run(
    client: &mut BlkClient,
    blocks: usize,
    rng: &mut Rng,
    requests: usize,
    sizes: (usize, usize),
) -> usize {
    let (write_blocks, read_blocks) = sizes;
    let mut model = Model {
        stable: vec![0; blocks],
        writing: vec![None; blocks],
        next_version: 1,
    };
    let mut slots: Vec<Option<InFlight>> = (0..QD).map(|_| None).collect();
    let mut completions = completions(QD);
    let (mut submitted, mut in_flight, mut overlapped) = (0, 0, 0);
    while submitted < requests || in_flight > 0 {
        for slot in 0..QD {
            if slots[slot].is_some() || submitted >= requests {
                continue;
            }
            let write = rng.below(2) == 0;
            let len =
                1 + rng.below((if write { write_blocks } else { read_blocks }) as u64) as usize;
            let first = rng.below((blocks - len + 1) as u64) as usize;
            let range = first..first + len;
            if write && model.writing[range.clone()].iter().all(Option::is_none) {
                let version = model.next_version;
                model.next_version += 1;
                let buf = client.slot(slot, SLOT);
                for (i, block) in range.clone().enumerate() {
                    buf[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(&block_bytes(block, version));
                    model.writing[block] = Some(version);
                }
                // Reads in flight over these blocks may now see it.
                for other in slots.iter_mut().flatten() {
                    if let InFlight::Read { first: r, allowed } = other {
                        for block in range.clone() {
                            if block >= *r && block < *r + allowed.len() {
                                allowed[block - *r].push(version);
                            }
                        }
                    }
                }
                client.submit_sized(0, true, (slot, SLOT), (first * BLOCK) as u64, len * BLOCK);
                slots[slot] = Some(InFlight::Write {
                    first,
                    blocks: len,
                    version,
                });
            } else {
                let allowed: Vec<Vec<u64>> = range
                    .clone()
                    .map(|b| {
                        std::iter::once(model.stable[b])
                            .chain(model.writing[b])
                            .collect()
                    })
                    .collect();
                client.submit_sized(0, false, (slot, SLOT), (first * BLOCK) as u64, len * BLOCK);
                slots[slot] = Some(InFlight::Read { first, allowed });
            }
            submitted += 1;
            in_flight += 1;
        }
        for (slot, ret) in client.reap(0, &mut completions) {
            in_flight -= 1;
            match slots[slot]
                .take()
                .expect("a completion for a slot in flight")
            {
                InFlight::Write {
                    first,
                    blocks,
                    version,
                } => {
                    assert!(ret >= 0, "write of blocks {first}+{blocks} failed: {ret}");
                    for block in first..first + blocks {
                        model.stable[block] = version;
                        model.writing[block] = None;
                    }
                }
                InFlight::Read { first, allowed } => {
                    assert!(
                        ret >= 0,
                        "read of blocks {first}+{} failed: {ret}",
                        allowed.len()
                    );
                    overlapped += usize::from(allowed.iter().any(|a| a.len() > 1));
                    let buf = client.slot(slot, SLOT);
                    for (i, allowed) in allowed.iter().enumerate() {
                        let block = first + i;
                        let got = version_of(block, &buf[i * BLOCK..(i + 1) * BLOCK])
                            .unwrap_or_else(|e| panic!("read of {first}+{}: {e}", allowed.len()));
                        assert!(
                            allowed.contains(&got),
                            "read of {first}+{}: block {block} holds version {got}, \
                             expected one of {allowed:?}",
                            allowed.len()
                        );
                    }
                }
            }
        }
    }
    for block in 0..blocks {
        let got = client.read(0, (block * BLOCK) as u64, BLOCK).unwrap();
        assert_eq!(
            version_of(block, &got),
            Ok(model.stable[block]),
            "block {block} after every request completed"
        );
    }
    overlapped
}

/// QD 64 of 4 KiB-128 KiB writes and reads all over a 16 MiB disk on one
/// queue: many batches of the queue in flight at once.
#[test]
fn one_queue_at_qd64_direct_matches_a_per_block_version_model() {
    let blocks = (16 * MIB) as usize / BLOCK;
    let setup = setup(16 * MIB, 4096, &[]);
    let mut daemon = setup.serve(&["--io", "direct"]);
    let mut client = daemon.client(1);
    let mut rng = Rng::from_env_or_clock("one queue at QD 64");
    let overlapped = run(&mut client, blocks, &mut rng, 6000, (32, 32));
    assert!(client.flush(0).is_ok());
    drop(client);
    daemon.stop_cleanly();
    // A daemon that serialised everything would still pass the model; the
    // lane's own test shows the batches run at once. Overlap is what this
    // test is about, so make sure there was some.
    assert!(overlapped > 0, "no read overlapped a write in flight");
}

/// Reads overlapping writes in flight: writes and reads of the same 64
/// blocks (256 KiB), so nearly every read meets a write in flight; each
/// must return the old or the new data, never an error or anything else.
#[test]
fn reads_overlapping_writes_in_flight_return_old_or_new_data_direct() {
    let setup = setup(16 * MIB, 4096, &[]);
    let mut daemon = setup.serve(&["--io", "direct"]);
    let mut client = daemon.client(1);
    let mut rng = Rng::from_env_or_clock("reads over writes in flight");
    let overlapped = run(&mut client, 64, &mut rng, 4000, (16, 64));
    drop(client);
    daemon.stop_cleanly();
    assert!(
        overlapped > 400,
        "only {overlapped} of ~2000 reads overlapped a write in flight"
    );
}

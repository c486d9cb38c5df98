//! Four queues at once, each driven by a thread of its own: on disjoint
//! ranges, and all over the same blocks.

use std::sync::Barrier;
use std::time::Instant;

use super::kit::blkio::{BlkClient, QueueIo, REGION_BYTES};
use super::kit::data::assert_same;
use super::kit::disk::Disk;
use super::kit::rng::Rng;
use super::{KIB, MIB, setup};

/// Runs `work` on each queue of `client` in a thread of its own; the threads
/// start together. Returns what each returned, in queue order.
fn on_every_queue<T: Send>(
    client: &mut BlkClient,
    work: impl Fn(usize, &mut QueueIo<'_>, &Barrier) -> T + Sync,
) -> Vec<T> {
    let mut queues = client.queue_ios();
    let barrier = Barrier::new(queues.len());
    std::thread::scope(|scope| {
        let threads: Vec<_> = queues
            .iter_mut()
            .enumerate()
            .map(|(index, queue)| {
                let (work, barrier) = (&work, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    work(index, queue, barrier)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

#[test]
fn four_queues_writing_disjoint_ranges_each_read_back_exactly_their_own_data() {
    const QUEUES: u64 = 4;
    const OWN_BYTES: u64 = 4 * MIB; // each queue's contiguous range
    const SHARED_BLOCKS: u64 = 1024; // 4 KiB blocks every queue writes a part of
    const SHARED_OFFSET: u64 = QUEUES * OWN_BYTES;
    let setup = setup(SHARED_OFFSET + SHARED_BLOCKS * 4096, 4096, &[]);
    let mut daemon = setup.serve(&["--num-queues", "4", "--block-size", "512"]);
    let mut client = daemon.client(QUEUES as i32);
    assert!(REGION_BYTES as u64 / QUEUES >= 256 * KIB);
    // No panics inside: a thread that stopped early would leave the others
    // waiting at the barrier for ever. Every failure is collected instead.
    let failures = on_every_queue(&mut client, |index, queue, barrier| {
        let index = index as u64;
        let mut failures = Vec::new();
        let mut rng = Rng(100 + index);
        let own_start = index * OWN_BYTES;
        let mut own = Disk::zeros(OWN_BYTES);
        for _ in 0..100 {
            let len = (rng.below(512) + 1) * 512;
            let offset = own_start + rng.below((OWN_BYTES - len) / 512 + 1) * 512;
            let data = rng.bytes(len as usize);
            match queue.write(offset, &data) {
                Ok(()) => own.put(offset - own_start, &data),
                Err(e) => failures.push(format!("queue {index}: write at {offset}: {e:?}")),
            }
        }
        // Queue `index` owns sectors 2*index and 2*index+1 of every shared
        // block, and all four write their part of a block at the same moment:
        // four read-modify-writes of one block at once. Each part is written
        // once, so a lost update stays lost, and shows.
        let mut shared = Vec::new();
        for block in 0..SHARED_BLOCKS {
            let offset = SHARED_OFFSET + block * 4096 + index * 1024;
            let data = Rng((index << 32) | block).bytes(1024);
            barrier.wait();
            match queue.write(offset, &data) {
                Ok(()) => shared.push((offset, data)),
                Err(e) => failures.push(format!("queue {index}: write at {offset}: {e:?}")),
            }
        }
        barrier.wait(); // every queue's writes are done
        let own_reads =
            (0..OWN_BYTES / MIB).map(|n| (own_start + n * MIB, own.range(n * MIB, MIB)));
        let shared_reads = shared.iter().map(|(offset, data)| (*offset, &data[..]));
        for (offset, want) in own_reads.chain(shared_reads) {
            match queue.read(offset, want.len()) {
                Ok(got) if got == want => {}
                Ok(_) => failures.push(format!("queue {index}: its data at {offset} differs")),
                Err(e) => failures.push(format!("queue {index}: read at {offset}: {e:?}")),
            }
        }
        failures
    });
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}\n{}",
        failures.len(),
        &failures[..failures.len().min(20)],
        daemon.stderr()
    );
    drop(client);
    daemon.stop_cleanly();
}

/// One acknowledged write of whole 4 KiB blocks, and when it was in flight.
struct BlockWrite {
    id: u32,
    first: u64,
    blocks: u64,
    submitted: Instant,
    completed: Instant,
}

/// The contents write `id` gives block `lba`: unique per (write, block), so
/// a block shows which write it came from, and a mix shows as neither.
fn block_fill(id: u32, lba: u64) -> Vec<u8> {
    Rng((u64::from(id) << 32) ^ lba).bytes(4096)
}

/// Blocks of `span` whose contents are no write a register could hold: the
/// final value of a block must come from a covering write that no other
/// covering write followed in real time (submitted after it completed), or
/// be zeros if nothing covered it.
fn impossible_blocks(disk: &[u8], writes: &[BlockWrite], span_blocks: u64) -> Vec<String> {
    let mut bad = Vec::new();
    for lba in 0..span_blocks {
        let got = &disk[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
        let covering: Vec<&BlockWrite> = writes
            .iter()
            .filter(|w| (w.first..w.first + w.blocks).contains(&lba))
            .collect();
        if covering.is_empty() {
            if got.iter().any(|b| *b != 0) {
                bad.push(format!("block {lba}: never written, not zeros"));
            }
            continue;
        }
        let possible = covering
            .iter()
            .filter(|w| !covering.iter().any(|later| later.submitted > w.completed));
        if !possible.clone().any(|w| block_fill(w.id, lba) == got) {
            let ids: Vec<u32> = possible.map(|w| w.id).collect();
            let any = covering.iter().find(|w| block_fill(w.id, lba) == got);
            bad.push(format!(
                "block {lba}: not one of writes {ids:?}{}",
                match any {
                    Some(w) => format!(" (holds superseded write {})", w.id),
                    None => " (holds no write whole: torn or mixed)".to_string(),
                }
            ));
        }
    }
    bad
}

#[test]
fn four_queues_writing_overlapping_ranges_leave_each_4k_block_whole_from_one_write() {
    const SPAN_BLOCKS: u64 = 512; // 2 MiB that every queue writes all over
    const WRITES_PER_QUEUE: u32 = 60;
    let setup = setup(SPAN_BLOCKS * 4096, 4096, &[]);
    let mut daemon = setup.serve(&["--num-queues", "4"]);
    let mut client = daemon.client(4);
    let per_queue = on_every_queue(&mut client, |index, queue, _| {
        let mut rng = Rng(200 + index as u64);
        let mut writes = Vec::new();
        for n in 0..WRITES_PER_QUEUE {
            let id = index as u32 * 1000 + n;
            let blocks = rng.below(64) + 1;
            let first = rng.below(SPAN_BLOCKS - blocks + 1);
            let data: Vec<u8> = (first..first + blocks)
                .flat_map(|lba| block_fill(id, lba))
                .collect();
            let submitted = Instant::now();
            queue.write(first * 4096, &data).unwrap();
            let completed = Instant::now();
            writes.push(BlockWrite {
                id,
                first,
                blocks,
                submitted,
                completed,
            });
        }
        writes
    });
    let writes: Vec<BlockWrite> = per_queue.into_iter().flatten().collect();
    let before = client.read_large(0, 0, SPAN_BLOCKS * 4096).unwrap();
    let bad = impossible_blocks(&before, &writes, SPAN_BLOCKS);
    assert!(
        bad.is_empty(),
        "{} bad blocks, first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );

    // The log decides the same after a restart: replay picks, for every
    // block, the write the live index picked.
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = setup.serve(&[]);
    let mut client = daemon.client(1);
    let after = client.read_large(0, 0, SPAN_BLOCKS * 4096).unwrap();
    assert_same(&after, &before, 0, "after a restart");
    drop(client);
    daemon.stop_cleanly();
}

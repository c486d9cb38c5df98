//! The load generator of one repetition on a vhost-user target (the device
//! and object-store benchmarks): each queue the workload uses is driven by a
//! thread of its own (as a guest's vCPUs drive theirs), keeping the
//! workload's queue depth in flight on it until the time or the write cap
//! runs out.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::Completion;

use super::MB_BYTES;
use crate::kit::blkio::{BlkClient, QueueIo, completions};
use crate::kit::rng::Rng;

/// What a repetition does.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// JSON / `--only` name, e.g. `randwrite_qd32`.
    pub key: &'static str,
    pub label: &'static str,
    pub write: bool,
    pub random: bool,
    /// Bytes per request.
    pub block: usize,
    /// Requests in flight on each queue.
    pub qd: usize,
    /// Queues driven at once, each by a thread of its own.
    pub queues: usize,
}

impl Workload {
    /// IOPS for 4 KiB workloads, MB/s for large ones.
    pub fn in_mbps(&self) -> bool {
        self.block >= 65536
    }

    /// `done` requests over `seconds` in this workload's unit.
    pub fn rate(&self, done: u64, seconds: f64) -> f64 {
        if self.in_mbps() {
            (done * self.block as u64) as f64 / seconds / MB_BYTES
        } else {
            done as f64 / seconds
        }
    }

    /// The unit [`Workload::rate`] reports in.
    pub fn unit(&self) -> &'static str {
        if self.in_mbps() { "MB/s" } else { "IOPS" }
    }
}

/// 4 KiB random writes at QD32 on one queue: the device and object-store
/// benchmarks both measure it, under the same key.
pub const RANDWRITE_QD32: Workload = Workload {
    key: "randwrite_qd32",
    label: "4 KiB randwrite QD32",
    write: true,
    random: true,
    block: 4096,
    qd: 32,
    queues: 1,
};

/// 1 MiB sequential writes at QD8 on one queue: the device and object-store
/// benchmarks both measure it, under the same key.
pub const SEQWRITE_1M: Workload = Workload {
    key: "seqwrite_1m",
    label: "1 MiB seqwrite QD8",
    write: true,
    random: false,
    block: 1 << 20,
    qd: 8,
    queues: 1,
};

/// What one repetition did: requests completed, and over how long.
pub struct Driven {
    pub done: u64,
    pub elapsed_s: f64,
}

/// Runs `workload` on the first `workload.queues` queues of `client` for
/// `duration` or until `write_cap` bytes were written (split evenly over
/// the queues); panics, naming `name`, if a request fails.
pub fn drive(
    client: &mut BlkClient,
    workload: &Workload,
    duration: Duration,
    write_cap: u64,
    rng: &mut Rng,
    name: &str,
) -> Driven {
    let capacity = client.capacity();
    let cap = if workload.write {
        write_cap / workload.queues as u64
    } else {
        u64::MAX
    };
    let mut queues = client.queue_ios();
    assert!(
        workload.queues <= queues.len(),
        "{name}: {} queues asked, {} connected",
        workload.queues,
        queues.len()
    );
    let seeds: Vec<u64> = (0..workload.queues).map(|_| rng.next()).collect();
    let start = Instant::now();
    let deadline = start + duration;
    let done = if workload.queues == 1 {
        let mut rng = Rng(seeds[0]);
        drive_queue(
            &mut queues[0],
            workload,
            capacity,
            deadline,
            cap,
            &mut rng,
            name,
        )
    } else {
        std::thread::scope(|scope| {
            let threads: Vec<_> = queues
                .iter_mut()
                .zip(&seeds)
                .map(|(queue, seed)| {
                    let mut rng = Rng(*seed);
                    scope.spawn(move || {
                        drive_queue(queue, workload, capacity, deadline, cap, &mut rng, name)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("queue thread"))
                .sum()
        })
    };
    Driven {
        done,
        elapsed_s: start.elapsed().as_secs_f64(),
    }
}

/// Keeps `workload.qd` requests in flight on `queue` (submit, wait for
/// completions, resubmit) until `deadline` or `cap` bytes submitted;
/// returns the requests completed.
fn drive_queue(
    queue: &mut QueueIo<'_>,
    workload: &Workload,
    capacity: u64,
    deadline: Instant,
    cap: u64,
    rng: &mut Rng,
    name: &str,
) -> u64 {
    let block = workload.block as u64;
    let blocks = capacity / block;
    let mut cursor = rng.below(blocks);
    let mut next_offset = |rng: &mut Rng| {
        if workload.random {
            rng.below(blocks) * block
        } else {
            cursor = (cursor + 1) % blocks;
            cursor * block
        }
    };
    let mut completions: Vec<MaybeUninit<Completion>> = completions(workload.qd);
    let mut submitted_bytes = 0u64;
    let mut in_flight = 0;
    let mut done = 0u64;
    for slot in 0..workload.qd {
        queue.submit(workload.write, slot, next_offset(rng), workload.block);
        submitted_bytes += block;
        in_flight += 1;
    }
    while in_flight > 0 {
        let slots = queue.reap_ok(&mut completions, name);
        let stop = Instant::now() >= deadline || submitted_bytes >= cap;
        for slot in slots {
            done += 1;
            if stop {
                in_flight -= 1;
            } else {
                queue.submit(workload.write, slot, next_offset(rng), workload.block);
                submitted_bytes += block;
            }
        }
    }
    done
}

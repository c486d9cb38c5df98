//! The load generator of one repetition on a vhost-user target: each queue
//! the workload uses is driven by a thread of its own (as a guest's vCPUs
//! drive theirs), keeping the workload's queue depth in flight on it until
//! the time or the write cap runs out.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::Completion;

use super::Workload;
use super::kit::blkio::{BlkClient, QueueIo, completions};
use super::kit::rng::Rng;

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

//! The load of one repetition on one volume: a libblkio client keeping a
//! fixed number of requests of one size in flight on its one queue, at
//! random or sequential offsets, until the time or the byte cap runs out;
//! a write repetition ends with a FLUSH, inside the timed interval (the
//! guest is not done until its writes are durable as the volume promises).

use std::time::{Duration, Instant};

use super::common::MB_BYTES;
use super::kit::blkio::{BlkClient, completions};
use super::kit::rng::Rng;

/// What a repetition does.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// JSON key stem, e.g. `randwrite_qd32`.
    pub key: &'static str,
    pub label: &'static str,
    pub write: bool,
    pub random: bool,
    /// Bytes per request.
    pub block: usize,
    /// Requests in flight.
    pub qd: usize,
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

/// Runs `workload` on queue 0 of `client` for `duration`, or until
/// `write_cap` bytes were written; returns its rate (see
/// [`Workload::rate`]), the closing FLUSH of a write repetition included.
/// Panics, naming `name`, if a request fails.
pub fn drive(
    client: &mut BlkClient,
    workload: &Workload,
    duration: Duration,
    write_cap: u64,
    rng: &mut Rng,
    name: &str,
) -> f64 {
    let block = workload.block as u64;
    let blocks = client.capacity() / block;
    let mut cursor = rng.below(blocks);
    let mut next_offset = |rng: &mut Rng| {
        let index = if workload.random {
            rng.below(blocks)
        } else {
            cursor = (cursor + 1) % blocks;
            cursor
        };
        index * block
    };
    let cap = if workload.write { write_cap } else { u64::MAX };
    let mut reaped = completions(workload.qd);
    let start = Instant::now();
    let deadline = start + duration;
    let (mut submitted, mut in_flight, mut done) = (0u64, 0usize, 0u64);
    let mut free: Vec<usize> = (0..workload.qd).collect();
    loop {
        let stop = Instant::now() >= deadline || submitted >= cap;
        if !stop {
            for slot in free.drain(..) {
                let offset = next_offset(rng);
                client.submit(0, workload.write, slot, offset, workload.block);
                submitted += block;
                in_flight += 1;
            }
        }
        if in_flight == 0 {
            break;
        }
        let slots = client.reap_ok(0, &mut reaped, name);
        in_flight -= slots.len();
        done += slots.len() as u64;
        free.extend(slots);
    }
    if workload.write {
        client
            .flush(0)
            .unwrap_or_else(|e| panic!("{name}: FLUSH failed: {e:?}"));
    }
    workload.rate(done, start.elapsed().as_secs_f64())
}

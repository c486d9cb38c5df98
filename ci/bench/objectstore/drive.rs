//! The load of one repetition on one volume: a libblkio client keeping a
//! fixed number of requests of one size in flight on its one queue, at
//! random or sequential offsets, until the time or the byte cap runs out;
//! a write repetition ends with a FLUSH, inside the timed interval (the
//! guest is not done until its writes are durable as the volume promises).

use std::time::{Duration, Instant};

use super::common::load::{Workload, drive as drive_queues};
use super::kit::blkio::BlkClient;
use super::kit::rng::Rng;

/// Runs `workload` on `client` for `duration`, or until `write_cap` bytes
/// were written; returns its rate (see [`Workload::rate`]), the closing
/// FLUSH of a write repetition included. Panics, naming `name`, if a
/// request fails.
pub fn drive(
    client: &mut BlkClient,
    workload: &Workload,
    duration: Duration,
    write_cap: u64,
    rng: &mut Rng,
    name: &str,
) -> f64 {
    let start = Instant::now();
    let driven = drive_queues(client, workload, duration, write_cap, rng, name);
    if workload.write {
        client
            .flush(0)
            .unwrap_or_else(|e| panic!("{name}: FLUSH failed: {e:?}"));
    }
    workload.rate(driven.done, start.elapsed().as_secs_f64())
}

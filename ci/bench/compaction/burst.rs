//! The foreground load: bursts of 4 KiB random writes through the libblkio
//! client, each with what the host did meanwhile.

use std::time::{Duration, Instant};

use super::common::MB_BYTES;
use super::host::{HostProbe, HostSample};
use super::kit::blkio::{BlkClient, completions};
use super::kit::rng::Rng;
use super::{EXIT_POLL, FILL_BYTES, FILL_QD, IO_BYTES};

/// How a burst of writes ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Time,
    Cap,
    /// The command it ran beside exited.
    Stopped,
}

/// One burst of 4 KiB random writes.
#[derive(Clone, Debug)]
pub struct Burst {
    pub ops: u64,
    pub seconds: f64,
    pub end: End,
    /// Longest wait for a completion, seconds: a stall of the daemon (a
    /// lock held long, a synchronous flush) shows here.
    pub max_wait_s: f64,
    /// What else ran on the host meanwhile.
    pub host: HostSample,
}

impl Burst {
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    pub fn bytes(&self) -> u64 {
        self.ops * IO_BYTES as u64
    }

    /// One progress line on stderr.
    pub fn log(&self, phase: &str) {
        eprintln!(
            "compaction bench:   {phase}: {:.0} IOPS ({:.3} s, {:?}, longest wait {:.1} ms); \
             host: {}",
            self.iops(),
            self.seconds,
            self.end,
            self.max_wait_s * 1e3,
            self.host.describe()
        );
    }
}

/// The client of the served volume, and the daemon serving it (for
/// [`HostProbe`]).
pub struct Client {
    pub blk: BlkClient,
    pub daemon_pid: u32,
}

impl Client {
    fn submit_write(&mut self, slot: usize, offset: u64) {
        self.blk.submit(0, true, slot, offset, IO_BYTES);
    }

    /// FLUSH, waited for; seconds.
    pub fn flush(&mut self) -> f64 {
        let start = Instant::now();
        if let Err(error) = self.blk.flush(0) {
            panic!("FLUSH failed: {error:?}");
        }
        start.elapsed().as_secs_f64()
    }

    /// Writes the whole disk once (1 MiB, QD 8) and flushes; MB/s.
    pub fn fill(&mut self) -> f64 {
        let seconds = self.blk.write_whole_disk(0, FILL_BYTES, FILL_QD);
        self.blk.capacity() as f64 / seconds / MB_BYTES
    }

    /// 4 KiB writes at uniformly random aligned offsets, `qd` in flight,
    /// until `cap` bytes were submitted, `duration` passed or `stop()` says
    /// so (asked every [`EXIT_POLL`]); the requests in flight then complete
    /// and count.
    pub fn random_writes(
        &mut self,
        rng: &mut Rng,
        qd: usize,
        cap: u64,
        duration: Option<Duration>,
        stop: &mut dyn FnMut() -> bool,
    ) -> Burst {
        let blocks = self.blk.capacity() / IO_BYTES as u64;
        let mut completions = completions(qd);
        let probe = HostProbe::start(Some(self.daemon_pid));
        let start = Instant::now();
        let deadline = duration.map(|d| start + d);
        let mut next_poll = start;
        let mut submitted = 0u64;
        let mut in_flight = 0;
        let mut done = 0u64;
        let mut end = None;
        for slot in 0..qd {
            if submitted < cap {
                self.submit_write(slot, rng.below(blocks) * IO_BYTES as u64);
                submitted += IO_BYTES as u64;
                in_flight += 1;
            }
        }
        let mut max_wait_s: f64 = 0.0;
        while in_flight > 0 {
            let waited = Instant::now();
            let slots = self.blk.reap_ok(0, &mut completions, "a write");
            max_wait_s = max_wait_s.max(waited.elapsed().as_secs_f64());
            if end.is_none() {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    end = Some(End::Time);
                } else if submitted >= cap {
                    end = Some(End::Cap);
                } else if now >= next_poll {
                    next_poll = now + EXIT_POLL;
                    if stop() {
                        end = Some(End::Stopped);
                    }
                }
            }
            for slot in slots {
                done += 1;
                if end.is_some() {
                    in_flight -= 1;
                } else {
                    self.submit_write(slot, rng.below(blocks) * IO_BYTES as u64);
                    submitted += IO_BYTES as u64;
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Burst {
            ops: done,
            seconds,
            end: end.unwrap_or(End::Cap),
            max_wait_s,
            host: probe.finish(),
        }
    }
}

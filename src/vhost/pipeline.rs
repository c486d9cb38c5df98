//! Several batches of one queue in flight at once (direct mode).
//!
//! A queue's worker hands each batch of reads or writes (a job) to one of
//! at most [`QUEUE_JOBS_IN_FLIGHT`](crate::limits::QUEUE_JOBS_IN_FLIGHT) threads of its own and goes back to
//! the virtqueue; the job publishes its requests' completions itself once
//! its I/O is done (`completion`). So the device works on one batch while
//! the CPU encrypts or decrypts another, and the guest sees the first
//! requests of a large wake-up complete while later ones are in flight.
//!
//! The threads are scoped to one drain of the queue (`backend`): a drain
//! returns only once every job it started is done, so stopping a queue
//! (`GET_VRING_BASE`, which waits for the drain) finds nothing in flight.
//! A lane of depth 1 runs every job on the worker itself, as before
//! (buffered mode, where the page cache already overlaps the two).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::sync::LockOrRecover;

/// A job: runs a batch and publishes its completions.
pub(crate) type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// One queue's jobs in flight, for the length of one drain.
pub(crate) struct Lane<'scope, 'env> {
    /// `None`: depth 1, every job runs on the caller.
    scope: Option<&'scope Scope<'scope, 'env>>,
    depth: usize,
    threads: usize,
    in_flight: usize,
    sender: Sender<Job<'env>>,
    receiver: Arc<Mutex<Receiver<Job<'env>>>>,
    /// Counts finished jobs; the worker waits on it (with the kick).
    done: Arc<EventFd>,
    /// Guest memory that reads in flight fill (address, length): a read
    /// into any of it waits for them (see `ReadBatch::overlaps`).
    filling: Vec<(usize, usize)>,
}

impl<'scope, 'env> Lane<'scope, 'env> {
    /// A lane running up to `depth` jobs at once on threads of `scope`
    /// (depth 1 or less: on the caller).
    pub(crate) fn new(scope: &'scope Scope<'scope, 'env>, depth: usize) -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        Ok(Self {
            scope: (depth > 1).then_some(scope),
            depth: depth.max(1),
            threads: 0,
            in_flight: 0,
            sender,
            receiver: Arc::new(Mutex::new(receiver)),
            done: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            filling: Vec::new(),
        })
    }

    /// True when a job handed over now would run on the caller: a lane of
    /// depth 1, or `last` (the drain's last job) with nothing in flight,
    /// where a thread would only add a hop (a queue at depth 1).
    pub(crate) fn runs_inline(&self, last: bool) -> bool {
        self.scope.is_none() || (last && self.in_flight == 0)
    }

    /// True while jobs are in flight.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// The descriptor that becomes readable when a job finishes.
    pub(crate) fn done_fd(&self) -> RawFd {
        self.done.as_raw_fd()
    }

    /// Starts `job` on a thread of the lane, first waiting for one in
    /// flight to finish when the lane is full.
    pub(crate) fn dispatch(&mut self, job: Job<'env>) {
        let Some(scope) = self.scope else {
            job();
            return;
        };
        self.reap();
        while self.in_flight >= self.depth {
            self.wait_one();
        }
        if self.threads == self.in_flight && self.threads < self.depth {
            let receiver = Arc::clone(&self.receiver);
            let done = Arc::clone(&self.done);
            let spawned = std::thread::Builder::new()
                .name("lsvblk-queue-job".to_owned())
                .spawn_scoped(scope, move || job_thread(&receiver, &done));
            match spawned {
                Ok(_) => self.threads += 1,
                Err(error) if self.threads == 0 => {
                    tracing::warn!(%error, "no thread for a queue's job: running it here");
                    job();
                    return;
                }
                Err(error) => tracing::warn!(%error, "no further thread for a queue's jobs"),
            }
        }
        self.in_flight += 1;
        if let Err(mpsc::SendError(job)) = self.sender.send(job) {
            // Every thread is gone (cannot happen while we hold the
            // receiver's Arc, but never drop a request).
            self.in_flight -= 1;
            job();
        }
    }

    /// Notes guest memory a read job dispatched now fills.
    pub(crate) fn filling(&mut self, ranges: impl IntoIterator<Item = (usize, usize)>) {
        if self.scope.is_some() {
            self.filling.extend(ranges);
        }
    }

    /// True when guest memory `(address, length)` overlaps what a read in
    /// flight fills.
    pub(crate) fn fills(&mut self, address: usize, len: usize) -> bool {
        self.reap();
        self.filling
            .iter()
            .any(|&(a, l)| a < address + len && address < a + l)
    }

    /// Counts the jobs finished since the last look, without waiting.
    pub(crate) fn reap(&mut self) {
        if let Ok(count) = self.done.read() {
            self.finished(count);
        }
    }

    /// Waits until at least one job in flight has finished.
    pub(crate) fn wait_one(&mut self) {
        let before = self.in_flight;
        while self.in_flight == before && self.in_flight > 0 {
            let _ = wait_readable(&[self.done_fd()], -1);
            self.reap();
        }
    }

    /// Waits until every job in flight has finished.
    pub(crate) fn wait_all(&mut self) {
        while self.in_flight > 0 {
            self.wait_one();
        }
    }

    fn finished(&mut self, count: u64) {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        self.in_flight = self.in_flight.saturating_sub(count);
        if self.in_flight == 0 {
            self.filling.clear();
        }
    }
}

/// A lane thread: runs jobs until the lane is dropped, counting each.
fn job_thread(receiver: &Mutex<Receiver<Job<'_>>>, done: &EventFd) {
    loop {
        let job = receiver.lock_or_recover().recv();
        let Ok(job) = job else {
            return;
        };
        // A job that panicked must still count as finished, or the worker
        // would wait for it forever.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a queue's job panicked; its requests are not completed");
        }
        if let Err(error) = done.write(1) {
            tracing::error!(%error, "cannot count a finished queue job");
        }
    }
}

/// Waits until one of `fds` is readable, or `timeout_ms` (-1: forever);
/// says which are.
pub(crate) fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polled` is a valid array of `polled.len()` pollfd entries
    // that lives across the call; poll only writes their `revents`.
    let result = unsafe {
        libc::poll(
            polled.as_mut_ptr(),
            polled.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            tracing::warn!(%error, "poll on a queue's events failed");
        }
    }
    polled
        .iter()
        .map(|p| result > 0 && p.revents & libc::POLLIN != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::limits::QUEUE_JOBS_IN_FLIGHT;

    /// Jobs that each wait (up to 10 s) for all of them to have started:
    /// they all meet only if the lane runs its depth of them at once.
    #[test]
    fn a_lane_runs_its_depth_of_jobs_at_once() {
        let started = AtomicUsize::new(0);
        let met = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let mut lane = Lane::new(scope, QUEUE_JOBS_IN_FLIGHT).unwrap();
            assert!(!lane.runs_inline(false));
            for _ in 0..QUEUE_JOBS_IN_FLIGHT {
                lane.dispatch(Box::new(|| {
                    started.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while started.load(Ordering::SeqCst) < QUEUE_JOBS_IN_FLIGHT {
                        if Instant::now() > deadline {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    met.fetch_add(1, Ordering::SeqCst);
                }));
            }
            assert!(lane.busy());
            lane.wait_all();
            assert!(!lane.busy());
        });
        assert_eq!(met.load(Ordering::SeqCst), QUEUE_JOBS_IN_FLIGHT);
    }

    /// A full lane makes the next dispatch wait for a job to finish: never
    /// more than its depth in flight.
    #[test]
    fn a_full_lane_waits_before_taking_another_job() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let mut lane = Lane::new(scope, 2).unwrap();
            for _ in 0..20 {
                lane.dispatch(Box::new(|| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            lane.wait_all();
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// Depth 1 runs each job on the caller, at once.
    #[test]
    fn a_lane_of_depth_one_runs_jobs_on_the_caller() {
        let caller = std::thread::current().id();
        let ran_on = Mutex::new(None);
        std::thread::scope(|scope| {
            let mut lane = Lane::new(scope, 1).unwrap();
            assert!(lane.runs_inline(false));
            lane.dispatch(Box::new(|| {
                *ran_on.lock_or_recover() = Some(std::thread::current().id());
            }));
            assert!(!lane.busy());
        });
        assert_eq!(*ran_on.lock_or_recover(), Some(caller));
    }

    /// A read into memory a read in flight fills is seen as such until
    /// the lane is idle again.
    #[test]
    fn memory_a_read_in_flight_fills_is_known_until_it_finishes() {
        std::thread::scope(|scope| {
            let mut lane = Lane::new(scope, 2).unwrap();
            let (go, wait) = mpsc::channel::<()>();
            lane.filling([(0x1000, 0x1000)]);
            lane.dispatch(Box::new(move || {
                let _ = wait.recv();
            }));
            assert!(lane.fills(0x1800, 16));
            assert!(lane.fills(0x0800, 0x1000));
            assert!(!lane.fills(0x2000, 0x1000));
            go.send(()).unwrap();
            lane.wait_all();
            assert!(!lane.fills(0x1800, 16));
        });
    }
}

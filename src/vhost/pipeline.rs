//! Several batches of one queue in flight at once (direct mode).
//!
//! A queue's worker hands each batch of reads or writes (a job) to a job
//! thread, at most [`QUEUE_JOBS_IN_FLIGHT`](crate::limits::QUEUE_JOBS_IN_FLIGHT)
//! at once, and goes back to the virtqueue; the job publishes its requests' completions itself once
//! its I/O is done (`completion`). So the device works on one batch while
//! the CPU encrypts or decrypts another, and the guest sees the first
//! requests of a large wake-up complete while later ones are in flight.
//!
//! The threads live as long as the process: a lane takes an idle one for
//! each job (making one only when none is idle) and the thread goes back
//! to the idle ones when the job is done, so a queue's busy spells do not
//! pay for thread creation. A lane waits for every job it started before
//! it is dropped (and a drain before it returns), so stopping a queue
//! (`GET_VRING_BASE`, which waits for the drain) finds nothing in flight.
//! A lane of depth 1 runs every job on the worker itself, as before
//! (buffered mode, where the page cache already overlaps the two).

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::sync::LockOrRecover;

/// A job: runs a batch and publishes its completions.
pub(crate) type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// A job as a job thread gets it, with the lane's count of finished jobs.
struct Handed {
    job: Job<'static>,
    done: Arc<EventFd>,
}

/// Job threads waiting for a job: the sending side of each one's channel.
static IDLE_THREADS: Mutex<Vec<Sender<Handed>>> = Mutex::new(Vec::new());

/// One queue's jobs in flight, for the length of one drain.
pub(crate) struct Lane<'env> {
    depth: usize,
    in_flight: usize,
    /// Counts finished jobs; the worker waits on it (with the kick).
    done: Arc<EventFd>,
    /// Guest memory that reads in flight fill (address, length): a read
    /// into any of it waits for them (see `ReadBatch::overlaps`).
    filling: Vec<(usize, usize)>,
    /// Jobs borrow for `'env`: the lane must not outlive it.
    _env: PhantomData<&'env ()>,
}

impl<'env> Lane<'env> {
    /// A lane running up to `depth` jobs at once on job threads (depth 1
    /// or less: on the caller).
    pub(crate) fn new(depth: usize) -> io::Result<Self> {
        Ok(Self {
            depth: depth.max(1),
            in_flight: 0,
            done: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            filling: Vec::new(),
            _env: PhantomData,
        })
    }

    /// True when a job handed over now would run on the caller: a lane of
    /// depth 1, or `last` (the drain's last job) with nothing in flight,
    /// where a thread would only add a hop (a queue at depth 1).
    pub(crate) fn runs_inline(&self, last: bool) -> bool {
        self.depth == 1 || (last && self.in_flight == 0)
    }

    /// True while jobs are in flight.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// The descriptor that becomes readable when a job finishes.
    pub(crate) fn done_fd(&self) -> RawFd {
        self.done.as_raw_fd()
    }

    /// Starts `job` on a job thread, first waiting for one in flight to
    /// finish when the lane is full.
    pub(crate) fn dispatch(&mut self, job: Job<'env>) {
        if self.depth == 1 {
            job();
            return;
        }
        self.reap();
        while self.in_flight >= self.depth {
            self.wait_one();
        }
        // SAFETY: only the lifetime changes (same fat pointer). What the
        // job borrows lives for 'env, which outlives this lane, and the
        // lane does not end before the job has: `Drop` waits for every job
        // in flight, also while unwinding, and a job thread counts a job
        // finished only after it has returned or panicked.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'env>, Job<'static>>(job) };
        let mut handed = Handed {
            job,
            done: Arc::clone(&self.done),
        };
        loop {
            let idle = IDLE_THREADS.lock_or_recover().pop();
            let Some(thread) = idle.or_else(spawn_job_thread) else {
                tracing::warn!("no thread for a queue's job: running it here");
                (handed.job)();
                return;
            };
            match thread.send(handed) {
                Ok(()) => break,
                // That thread is gone: try another.
                Err(mpsc::SendError(back)) => handed = back,
            }
        }
        self.in_flight += 1;
    }

    /// Notes guest memory a read job dispatched now fills.
    pub(crate) fn filling(&mut self, ranges: impl IntoIterator<Item = (usize, usize)>) {
        if self.depth > 1 {
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

impl Drop for Lane<'_> {
    /// Jobs borrow what the lane's owner lends them: wait for them all.
    fn drop(&mut self) {
        self.wait_all();
    }
}

/// A new job thread, waiting on a channel of its own; `None` if the
/// system has no thread to give.
fn spawn_job_thread() -> Option<Sender<Handed>> {
    let (sender, receiver) = mpsc::channel();
    let back = sender.clone();
    let spawned = std::thread::Builder::new()
        .name("lsvblk-queue-job".to_owned())
        .spawn(move || job_thread(&receiver, &back));
    match spawned {
        Ok(_) => Some(sender),
        Err(error) => {
            tracing::warn!(%error, "cannot start a thread for a queue's jobs");
            None
        }
    }
}

/// A job thread: runs the jobs handed to it, one at a time; after each
/// it goes back to the idle threads (`me`), then counts the job done.
fn job_thread(receiver: &Receiver<Handed>, me: &Sender<Handed>) {
    while let Ok(Handed { job, done }) = receiver.recv() {
        // A job that panicked must still count as finished, or the worker
        // would wait for it forever.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a queue's job panicked; its requests are not completed");
        }
        // Idle again before the lane hears of it, so its next job finds
        // this thread rather than making another.
        IDLE_THREADS.lock_or_recover().push(me.clone());
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
        {
            let mut lane = Lane::new(QUEUE_JOBS_IN_FLIGHT).unwrap();
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
        }
        assert_eq!(met.load(Ordering::SeqCst), QUEUE_JOBS_IN_FLIGHT);
    }

    /// A full lane makes the next dispatch wait for a job to finish: never
    /// more than its depth in flight.
    #[test]
    fn a_full_lane_waits_before_taking_another_job() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        {
            let mut lane = Lane::new(2).unwrap();
            for _ in 0..20 {
                lane.dispatch(Box::new(|| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            lane.wait_all();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// Depth 1 runs each job on the caller, at once.
    #[test]
    fn a_lane_of_depth_one_runs_jobs_on_the_caller() {
        let caller = std::thread::current().id();
        let ran_on = Mutex::new(None);
        {
            let mut lane = Lane::new(1).unwrap();
            assert!(lane.runs_inline(false));
            lane.dispatch(Box::new(|| {
                *ran_on.lock_or_recover() = Some(std::thread::current().id());
            }));
            assert!(!lane.busy());
        }
        assert_eq!(*ran_on.lock_or_recover(), Some(caller));
    }

    /// A lane dropped with a job in flight (as on an early return of the
    /// drain) waits for it first: what the job borrows is still there
    /// while it runs.
    #[test]
    fn dropping_a_lane_waits_for_its_jobs() {
        let finished = AtomicUsize::new(0);
        {
            let mut lane = Lane::new(2).unwrap();
            lane.dispatch(Box::new(|| {
                std::thread::sleep(Duration::from_millis(50));
                finished.fetch_add(1, Ordering::SeqCst);
            }));
            assert!(lane.busy());
        }
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    /// Job threads outlive their lane: a later lane's jobs run on the
    /// threads of an earlier one (no new thread per busy spell).
    #[test]
    fn a_later_lane_reuses_the_job_threads_of_an_earlier_one() {
        let first: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());
        {
            let mut lane = Lane::new(2).unwrap();
            lane.dispatch(Box::new(|| {
                first.lock_or_recover().push(std::thread::current().id());
            }));
            lane.wait_all();
        }
        // Other tests of this binary dispatch at the same time and may take
        // that thread meanwhile: a few tries, each with an idle thread pool
        // the first one's thread is in.
        let reused = (0..50).any(|_| {
            let ran_on = Mutex::new(None);
            let mut lane = Lane::new(2).unwrap();
            lane.dispatch(Box::new(|| {
                *ran_on.lock_or_recover() = Some(std::thread::current().id());
            }));
            lane.wait_all();
            let ran_on = ran_on.lock_or_recover().expect("the job ran");
            first.lock_or_recover().contains(&ran_on)
        });
        assert!(reused, "a job thread was reused");
    }

    /// A read into memory a read in flight fills is seen as such until
    /// the lane is idle again.
    #[test]
    fn memory_a_read_in_flight_fills_is_known_until_it_finishes() {
        {
            let mut lane = Lane::new(2).unwrap();
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
        }
    }
}

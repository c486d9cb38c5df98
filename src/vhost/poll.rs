//! Polling a virtqueue for a short, bounded time after draining it, before
//! the worker goes back to sleep on the queue's kick eventfd (as QEMU's
//! AioContext polling and SPDK do).
//!
//! At queue depth 1 the driver puts its next request on the ring a few
//! microseconds after it saw the previous one complete. A worker that
//! slept right away would be woken by the kick: a syscall on the
//! driver's side and a wake-up on ours, tens of microseconds on a
//! virtual machine's host. A worker that spins on the ring's avail index
//! for up to `--poll-us` sees the request itself, with notifications
//! still disabled, so the driver does not even kick. The cost is CPU: up to
//! the window after every drain that is not followed by another request
//! within it; an idle queue costs nothing (the window starts only after a
//! drain).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use super::state::{GuestRam, Vring};

/// `--poll-us` when not given: see the README's Performance section for
/// the measurement behind it.
pub const POLL_US_DEFAULT: u32 = 50;

/// Longest `--poll-us` accepted: past this, polling is a busy core, not a
/// wait.
pub const POLL_US_MAX: u32 = 1000;

/// How long a worker polls its queue after a drain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PollWindow(Duration);

impl PollWindow {
    /// A window of `us` microseconds (0: no polling).
    pub(crate) fn from_us(us: u32) -> Self {
        PollWindow(Duration::from_micros(u64::from(us)))
    }

    /// Spins until the driver has made a request available on `vring`
    /// (true), or the window ends or the queue stops (false).
    pub(crate) fn wait_for_request(self, vring: &Vring, mem: &GuestRam) -> bool {
        if self.0.is_zero() {
            return false;
        }
        let deadline = Instant::now() + self.0;
        loop {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !queue.ready() {
                    return false;
                }
                match queue.avail_idx(mem, Ordering::Acquire) {
                    Ok(avail) if avail.0 != queue.next_avail() => return true,
                    Ok(_) => {}
                    // A ring we cannot read: the drain just reported it;
                    // sleep until the driver resets the queue.
                    Err(_) => return false,
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }
}

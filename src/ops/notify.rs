//! The systemd readiness protocol (sd_notify(3)) for `Type=notify` units,
//! through the `sd-notify` crate: a datagram to `$NOTIFY_SOCKET`, nothing at
//! all when the variable is unset (a daemon started from a shell).
//!
//! `READY=1` is sent only once the daemon's socket is listening, so that a
//! unit ordered after it (QEMU, libvirt, lsvblk after lsvkms) never starts
//! before it can connect; `STOPPING=1` as soon as a stop signal arrives.
//! A failure to notify is logged, never fatal: the daemon serves either way.

use sd_notify::NotifyState;

/// Tells the service manager the daemon is up, with a one-line `status`
/// (`systemctl status` shows it).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)], "READY");
}

/// Tells the service manager the daemon is stopping (flushing, closing).
pub fn stopping() {
    send(
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
        "STOPPING",
    );
}

fn send(states: &[NotifyState], what: &str) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, what, "could not notify the service manager");
    }
}

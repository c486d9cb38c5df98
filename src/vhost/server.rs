//! Accepting vhost-user connections, one after another, until told to stop.
//!
//! A VMM may disconnect and come back (a VMM restart, a live migration
//! source giving up): after each disconnect the volume is flushed and the
//! same socket accepts the next connection. A stop request (SIGTERM/SIGINT
//! in the daemon) ends the current connection, or wakes a waiting accept.
//! Connections are accepted here, not by the vhost-user crate, so that each
//! peer is checked ([`AllowedPeers`]) before a message is read.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::metrics::DeviceMetrics;
use super::peer_check::AllowedPeers;
use super::{BlockBackend, DeviceOptions};
use crate::peer::peer_credentials;
use crate::sync::LockOrRecover;
use crate::volume::VolumeError;
use crate::volume::handover::Served;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("cannot listen on {}: {reason}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The error.
        reason: String,
    },
    /// The vhost-user machinery failed outside any one connection.
    #[error("vhost-user: {0}")]
    Vhost(String),
    /// Flushing the volume after a connection failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// Asks a running [`Server`] to stop, and tells whether its frontend runs
/// the device; cheap to clone into a signal thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    device: Arc<Mutex<Option<BlockBackend>>>,
    socket: PathBuf,
}

impl StopHandle {
    /// Stops the server: the current connection is shut down (its requests
    /// finish first), or the waiting accept is woken.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let current = self.current.lock_or_recover().take();
        match current {
            Some(handle) => handle.shutdown(),
            // Nobody connected: wake the accept with a connection of our own.
            None => drop(UnixStream::connect(&self.socket)),
        }
    }

    /// True once a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// True while the connected frontend runs the device (a queue is
    /// started): a VM is using the disk through this daemon.
    pub fn is_device_running(&self) -> bool {
        self.device
            .lock_or_recover()
            .as_ref()
            .is_some_and(BlockBackend::is_running)
    }
}

/// Serves one volume on one socket, connection after connection.
pub struct Server {
    served: Arc<Served>,
    options: DeviceOptions,
    listener: Listener,
    stop: StopHandle,
    metrics: Arc<DeviceMetrics>,
    allowed: AllowedPeers,
}

impl Server {
    /// Binds `socket` (replacing a stale socket file) for `served`.
    pub fn bind(
        served: Arc<Served>,
        socket: &Path,
        options: DeviceOptions,
    ) -> Result<Self, ServeError> {
        let listener = Listener::new(socket, true).map_err(|e| ServeError::Listen {
            path: socket.to_path_buf(),
            reason: e.to_string(),
        })?;
        let stop = StopHandle {
            stop: Arc::new(AtomicBool::new(false)),
            current: Arc::new(Mutex::new(None)),
            device: Arc::new(Mutex::new(None)),
            socket: socket.to_path_buf(),
        };
        let metrics = Arc::new(DeviceMetrics::new(options.num_queues));
        Ok(Self {
            served,
            options,
            listener,
            stop,
            metrics,
            allowed: AllowedPeers::default(),
        })
    }

    /// The device's counters, kept across connections.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves only `allowed` peers (the default: our own user and root).
    pub fn allow_peers(mut self, allowed: AllowedPeers) -> Self {
        self.allowed = allowed;
        self
    }

    /// A handle that stops this server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Accepts and serves connections until stopped. The volume is flushed
    /// after every connection.
    pub fn run(mut self) -> Result<(), ServeError> {
        let mut connections = 0u64;
        while !self.stop.is_stopping() {
            self.serve_one(connections)?;
            connections += 1;
            if let Some(volume) = self.served.if_active() {
                volume.flush()?;
            }
        }
        Ok(())
    }

    /// Accepts connections until one comes from an allowed peer (or the
    /// stop's wake-up connection); the others are closed unread.
    fn accept_allowed(&self) -> Result<UnixStream, ServeError> {
        loop {
            let accepted = self
                .listener
                .accept()
                .map_err(|e| ServeError::Vhost(e.to_string()))?;
            let Some(stream) = accepted else { continue };
            if self.stop.is_stopping() {
                return Ok(stream);
            }
            match peer_credentials(&stream) {
                Ok(peer) if self.allowed.allows(&peer) => return Ok(stream),
                Ok(peer) => tracing::warn!(
                    uid = peer.uid,
                    gid = peer.gid,
                    pid = peer.pid,
                    allowed = %self.allowed,
                    "vhost-user connection refused: the peer is not an allowed user or group"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    "vhost-user connection refused: its peer's credentials are unreadable"
                ),
            }
        }
    }

    fn serve_one(&mut self, number: u64) -> Result<(), ServeError> {
        let backend = BlockBackend::counted(
            Arc::clone(&self.served),
            self.options.clone(),
            Arc::clone(&self.metrics),
        );
        *self.stop.device.lock_or_recover() = Some(backend.clone());
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("lsvblk".to_string(), backend, memory)
            .map_err(|e| ServeError::Vhost(e.to_string()))?;
        tracing::info!(connection = number, "waiting for a vhost-user frontend");
        let stream = self.accept_allowed()?;
        daemon
            .start_with_stream(stream)
            .map_err(|e| ServeError::Vhost(e.to_string()))?;
        *self.stop.current.lock_or_recover() = daemon.shutdown_handle();
        if self.stop.is_stopping() {
            daemon.request_shutdown(); // the stop came while we were accepting
        } else {
            tracing::info!(connection = number, "frontend connected");
        }
        let stopping = self.stop.is_stopping();
        let result = daemon.wait();
        self.stop.current.lock_or_recover().take();
        self.stop.device.lock_or_recover().take();
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        drop(daemon); // joins the queue workers: no request is in flight after this
        match result {
            _ if stopping => {} // our own wake-up connection, or shut down on request
            Ok(()) => tracing::info!(connection = number, "frontend disconnected"),
            // A VMM that exits just closes the socket: that is a disconnect,
            // not an error worth a warning.
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!(connection = number, "frontend disconnected"),
            Err(error) => {
                tracing::warn!(connection = number, %error, "connection ended with an error")
            }
        }
        Ok(())
    }
}

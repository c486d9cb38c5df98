//! The daemon's side: a listener thread and one short-lived thread per
//! connection, so that `status` is answered while a compaction runs.

use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use lsvblk::kms::auth::PeerIdentity;
use lsvblk::kms::auth::peer::unix_peer;
use lsvblk::kms::fsutil::effective_uid;
use serde_json::Value;

use super::SocketAddrPath;
use super::protocol::{
    ControlError, ControlReply, ControlRequest, Line, REQUEST_BYTES_MAX, encode_reply, read_line,
};

/// Connections served at once; more are answered `busy` and closed.
const CONNECTIONS_MAX: usize = 16;
/// How long a client may take to send its request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply line may wait for a client that does not read.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon does with a request: the volume operations behind the
/// socket. Called on the connection's own thread, so it may block (a
/// compaction takes minutes) while other requests are handled concurrently.
pub trait ControlHandler: Send + Sync + 'static {
    /// Carries out `request`. `progress` sends a `{"progress": …}` line to
    /// the client (dropped silently once the client has gone away); the
    /// result becomes the final `ok` or `error` line.
    fn handle(
        &self,
        request: ControlRequest,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ControlError>;
}

/// A listening control socket. Dropping it (or [`ControlServer::stop`])
/// stops accepting and removes the socket file; requests already being
/// handled run to completion on their own threads.
pub struct ControlServer {
    path: PathBuf,
    /// (device, inode) of the socket file we bound: only that file is removed.
    identity: (u64, u64),
    listener: Arc<UnixListener>,
    stopping: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `socket_path` (mode 0600) and serves it with `handler` on a
    /// background thread. A stale socket file (a socket nobody answers on)
    /// is replaced; a live socket or any other kind of file is an error.
    pub fn start(socket_path: &Path, handler: Arc<dyn ControlHandler>) -> anyhow::Result<Self> {
        let address = SocketAddrPath::new(socket_path)?;
        remove_stale(socket_path, &address)?;
        let listener = UnixListener::bind(address.path())
            .with_context(|| format!("binding control socket {}", socket_path.display()))?;
        let meta = std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::symlink_metadata(socket_path))
            .inspect_err(|_| {
                // Leave no socket behind that nobody serves.
                let _ = std::fs::remove_file(socket_path);
            })
            .with_context(|| format!("chmod 0600 {}", socket_path.display()))?;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let listener = Arc::clone(&listener);
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("control-accept".to_owned())
                .spawn(move || accept_loop(&listener, &stopping, &handler))
                .context("spawning the control socket thread")?
        };
        tracing::info!(socket = %socket_path.display(), "control socket listening");
        Ok(Self {
            path: socket_path.to_owned(),
            identity: (meta.dev(), meta.ino()),
            listener,
            stopping,
            accept_thread: Some(accept_thread),
        })
    }

    /// Stops accepting and removes the socket file (as dropping does).
    pub fn stop(self) {}

    fn shutdown(&mut self) {
        let Some(thread) = self.accept_thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: the fd belongs to `self.listener`, which is open for the
        // whole call; shutdown(2) only changes the socket's state (it wakes
        // the blocked accept(2) with EINVAL) and touches no memory of ours.
        let rc = unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if rc == 0 {
            let _ = thread.join();
        } else {
            // Cannot wake it: leave the thread; it exits at its next accept.
            tracing::warn!(error = %io::Error::last_os_error(), "control socket shutdown failed");
        }
        // Remove the file only if it is still the socket we bound.
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), error = %e,
                        "cannot remove control socket");
                }
            }
            _ => {}
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes `path` if it is a socket nobody answers on; refuses a live
/// socket and anything that is not a socket.
fn remove_stale(path: &Path, address: &SocketAddrPath) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        );
    }
    match UnixStream::connect(address.path()) {
        Ok(_) => bail!(
            "control socket {} is in use by another process",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing stale control socket");
            std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("probing {}", path.display())),
    }
}

fn accept_loop(listener: &UnixListener, stopping: &AtomicBool, handler: &Arc<dyn ControlHandler>) {
    let active = Arc::new(AtomicUsize::new(0));
    let our_uid = effective_uid();
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => dispatch(stream, handler, &active, our_uid),
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Checks the peer, then serves `stream` on its own thread.
fn dispatch(
    stream: UnixStream,
    handler: &Arc<dyn ControlHandler>,
    active: &Arc<AtomicUsize>,
    our_uid: u32,
) {
    if let Err(e) = stream
        .set_read_timeout(Some(REQUEST_READ_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_WRITE_TIMEOUT)))
    {
        tracing::warn!(error = %e, "control connection: cannot set timeouts");
        return;
    }
    match peer_uid(&stream) {
        Ok(uid) if may_control(uid, our_uid) => {}
        Ok(uid) => {
            tracing::warn!(uid, "control connection refused: foreign uid");
            let error = ControlError::new(
                ControlError::DENIED,
                format!("uid {uid} may not control this daemon (it runs as uid {our_uid})"),
            );
            send_final(&stream, &ControlReply::Error(error));
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "control connection: SO_PEERCRED failed");
            return;
        }
    }
    let Some(slot) = Slot::take(active) else {
        let error = ControlError::new(
            ControlError::BUSY,
            format!("{CONNECTIONS_MAX} control requests are running already"),
        );
        send_final(&stream, &ControlReply::Error(error));
        return;
    };
    let handler = Arc::clone(handler);
    let spawned = std::thread::Builder::new()
        .name("control-conn".to_owned())
        .spawn(move || {
            let _slot = slot;
            serve_connection(&stream, &*handler);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "control connection: cannot spawn a thread");
    }
}

/// Whether a peer running as `peer_uid` may use the socket of a daemon
/// running as `our_uid`: the same user, or root.
pub(super) fn may_control(peer_uid: u32, our_uid: u32) -> bool {
    peer_uid == our_uid || peer_uid == 0
}

/// One request, its progress lines and its final line.
fn serve_connection(stream: &UnixStream, handler: &dyn ControlHandler) {
    let request = match read_request(stream) {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(error = %error, "bad control request");
            send_final(stream, &ControlReply::Error(error));
            return;
        }
    };
    let op = request.op();
    tracing::info!(op, "control request");
    let mut client_gone = false;
    let mut progress = |value: Value| {
        if !client_gone && send(stream, &ControlReply::Progress(value)).is_err() {
            // Keep going: the operation does not depend on anyone watching.
            tracing::info!(op, "control client went away; finishing without it");
            client_gone = true;
        }
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| handler.handle(request, &mut progress)));
    let reply = match outcome {
        Ok(Ok(value)) => {
            tracing::info!(op, "control request done");
            ControlReply::Ok(value)
        }
        Ok(Err(error)) => {
            tracing::warn!(op, error = %error, "control request failed");
            ControlReply::Error(error)
        }
        Err(_) => {
            tracing::error!(op, "control request handler panicked");
            ControlReply::Error(ControlError::new(
                ControlError::INTERNAL,
                format!("the daemon failed while handling {op} (see its log)"),
            ))
        }
    };
    if !client_gone {
        send_final(stream, &reply);
    }
}

/// Reads and parses the request line; `Ok(None)` if the client closed
/// without sending anything (e.g. a liveness probe).
fn read_request(stream: &UnixStream) -> Result<Option<ControlRequest>, ControlError> {
    let mut reader = BufReader::new(stream);
    let line = match read_line(&mut reader, REQUEST_BYTES_MAX) {
        Ok(Line::Text(line)) => line,
        Ok(Line::Eof) => return Ok(None),
        Ok(Line::TooLong) => {
            return Err(ControlError::new(
                ControlError::BAD_REQUEST,
                format!("request line longer than {REQUEST_BYTES_MAX} bytes"),
            ));
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ControlError::new(
                ControlError::BAD_REQUEST,
                format!("no request line within {REQUEST_READ_TIMEOUT:?}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| ControlError::new(ControlError::BAD_REQUEST, format!("invalid request: {e}")))
}

fn send(mut stream: &UnixStream, reply: &ControlReply) -> io::Result<()> {
    stream.write_all(&encode_reply(reply))
}

/// Sends the last line of an answer, logging (only) a failure.
fn send_final(stream: &UnixStream, reply: &ControlReply) {
    if let Err(e) = send(stream, reply) {
        tracing::info!(error = %e, "control client went away before the answer");
    }
}

/// The peer's effective uid, as the kernel recorded it at `connect`
/// (`SO_PEERCRED`, through the library's helper that lsvkms uses too).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    match unix_peer(stream)? {
        PeerIdentity::Unix { uid, .. } => Ok(uid),
        other => Err(io::Error::other(format!(
            "unexpected peer identity {}",
            other.describe()
        ))),
    }
}

/// One of the [`CONNECTIONS_MAX`] connection slots, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Self> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < CONNECTIONS_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

//! The HTTP server: the UNIX-socket listener (TLS over TCP is in
//! [`super::tls`]), one thread per connection, and what keeps hostile
//! clients from locking the others out:
//!
//! - the peer is identified (`SO_PEERCRED`) **before a byte is read**; a
//!   peer that is not an allow-listed service is answered 403 without
//!   reading and the connection closed at once, so strangers never hold a
//!   slot;
//! - at most 64 connections, at most 16 per peer ([`Admission`]);
//! - a request has [`HTTP_REQUEST_MS_MAX`] from its first byte to its last,
//!   head and body, however it trickles in; a kept-alive connection
//!   [`HTTP_IDLE_MS_MAX`] between requests;
//! - every refusal at this level is audited, counted per peer and reason
//!   ([`super::refusal`]).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{Admission, Slot};
use super::auth::PeerIdentity;
use super::auth::peer::unix_peer;
use super::http::{Deadlines, HttpConn, TimeoutStream, response_bytes};
use super::limits::{
    HTTP_BODY_BYTES_MAX, HTTP_IDLE_MS_MAX, HTTP_REQUEST_MS_MAX, HTTP_REQUESTS_PER_CONNECTION_MAX,
};
use super::metrics;
use super::refusal::Refusal;
use super::router::{Reply, route};
use super::service::Service;

/// The time limits every server connection runs under.
pub const DEADLINES: Deadlines = Deadlines {
    idle: Duration::from_millis(HTTP_IDLE_MS_MAX),
    whole: Duration::from_millis(HTTP_REQUEST_MS_MAX),
};

/// Serves one connection until the peer closes it, it idles too long, or
/// it has sent [`HTTP_REQUESTS_PER_CONNECTION_MAX`] requests. A peer that
/// is not allow-listed (a TLS client, known only after its handshake) is
/// answered 403 without a byte read; a request the codec refuses (too
/// large, malformed, too slow) is answered and the connection closed.
pub fn serve_connection<S: Read + Write + TimeoutStream>(
    service: &Service,
    peer: &PeerIdentity,
    stream: S,
) {
    let mut conn = HttpConn::with_deadlines(stream, HTTP_BODY_BYTES_MAX, DEADLINES);
    if !service.is_allowed(peer) {
        refuse(service, peer, &mut conn, Refusal::Stranger, "");
        return;
    }
    for served in 0..HTTP_REQUESTS_PER_CONNECTION_MAX {
        let request = match conn.read_request() {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                match Refusal::of_http(&error) {
                    // A kept-alive connection that goes quiet just closes.
                    Some(Refusal::Idle) if served > 0 => {}
                    Some(refusal) => refuse(service, peer, &mut conn, refusal, &error.to_string()),
                    None => tracing::debug!(%error, "connection ended"),
                }
                return;
            }
        };
        let started = Instant::now();
        let reply = route(
            service,
            peer,
            &request.method,
            &request.target,
            &request.body,
        );
        tracing::debug!(method = %request.method, target = %request.target, status = reply.status, "request");
        // Counted before the answer goes out: a client that scrapes the
        // metrics right after its answer must find its call in them.
        let endpoint = metrics::endpoint(&request.method, &request.target);
        service
            .metrics()
            .answered(endpoint, reply.status, started.elapsed());
        let written = conn.write_response(reply.status, &reply.body, request.keep_alive);
        drop(reply);
        scrub_request_traces();
        if written.is_err() || !request.keep_alive {
            return;
        }
    }
}

/// Bytes of stack below [`serve_connection`]'s frame that a request's
/// callees may have used (the router, the service, the AEAD that opened
/// the blob, JSON and base64 encoding of the answer), with room to spare;
/// well inside the connection thread's [`CONNECTION_STACK_BYTES`].
const REQUEST_FRAMES_BYTES: usize = 128 * 1024;

/// Stack of a connection thread.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

const _: () = assert!(REQUEST_FRAMES_BYTES * 3 / 2 <= CONNECTION_STACK_BYTES);

/// Overwrites what a request left in dead stack frames and in vector
/// registers. Opening a blob, deriving a key id and encoding the answer
/// put the plaintext key (raw, in AES and hash state, as base64) in the
/// frames of callees; left there, it would stay in this thread's stack, or
/// in the cached stack of the thread once it exits, long after the answer
/// went out. Called after every request (a few microseconds: one memset).
#[inline(never)]
fn scrub_request_traces() {
    let mut frames = [0u8; REQUEST_FRAMES_BYTES];
    // The compiler must assume `black_box` reads the zeros: the memset stays.
    std::hint::black_box(&mut frames);
    crate::crypto::hygiene::scrub_vector_registers();
}

/// Counts `refusal` for the audit log and answers it (best effort: the
/// peer may be gone, or too slow to take the answer).
fn refuse<S: Read + Write + TimeoutStream>(
    service: &Service,
    peer: &PeerIdentity,
    conn: &mut HttpConn<S>,
    refusal: Refusal,
    detail: &str,
) {
    service.note_refusal(peer, refusal);
    let reply = Reply::error(&refusal.answer(&peer.describe(), detail));
    let _ = conn.write_response(reply.status, &reply.body, false);
}

/// Counts `refusal` and answers it on a connection nothing was read from,
/// without waiting (the answer fits in the empty socket buffer; a peer
/// that does not read it loses it), then closes the connection.
fn refuse_unread(service: &Service, peer: &PeerIdentity, stream: UnixStream, refusal: Refusal) {
    service.note_refusal(peer, refusal);
    let reply = Reply::error(&refusal.answer(&peer.describe(), ""));
    let message = response_bytes(reply.status, &reply.body, false);
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(&message);
    }
}

/// Binds the UNIX socket at `path` with `mode`. A stale socket file (no
/// server answers on it) is replaced; a live one is an error.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts connections forever: strangers and peers over their share are
/// answered and closed here, the others served on a thread each.
pub fn serve_unix(listener: UnixListener, service: Arc<Service>) -> io::Result<()> {
    let admission = Admission::new();
    for stream in accepted(listener.incoming()) {
        let peer = match unix_peer(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "SO_PEERCRED failed; dropping connection");
                continue;
            }
        };
        if !service.is_allowed(&peer) {
            refuse_unread(&service, &peer, stream, Refusal::Stranger);
            continue;
        }
        let Some(slot) = admission.admit(&peer.describe()) else {
            tracing::debug!(peer = %peer.describe(), "no connection slot for the peer");
            refuse_unread(&service, &peer, stream, Refusal::Busy);
            continue;
        };
        spawn_connection(&service, slot, stream, move |service, stream| {
            serve_connection(service, &peer, stream)
        })?;
    }
    Ok(())
}

/// The connections `incoming` accepts. A failed accept (out of file
/// descriptors, a peer gone before its accept) is logged and followed by a
/// short pause, and the server goes on.
pub fn accepted<S>(incoming: impl Iterator<Item = io::Result<S>>) -> impl Iterator<Item = S> {
    incoming.filter_map(|stream| {
        stream
            .inspect_err(|e| {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
            })
            .ok()
    })
}

/// Runs `serve(service, stream)` on its own thread, holding `slot` until
/// it returns.
pub fn spawn_connection<S, F>(
    service: &Arc<Service>,
    slot: Slot,
    stream: S,
    serve: F,
) -> io::Result<()>
where
    S: Send + 'static,
    F: FnOnce(&Service, S) + Send + 'static,
{
    let service = Arc::clone(service);
    std::thread::Builder::new()
        .name("kms-conn".into())
        .stack_size(CONNECTION_STACK_BYTES)
        .spawn(move || {
            let _slot = slot;
            serve(&service, stream);
        })?;
    Ok(())
}

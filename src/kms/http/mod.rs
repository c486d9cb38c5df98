//! A small, bounded HTTP/1.1 codec over any `Read + Write` stream, used by
//! both the server and the client.
//!
//! Only what the API needs: `Content-Length` bodies (no chunked encoding:
//! refused), keep-alive, `Expect: 100-continue`. Heads and bodies are
//! bounded ([`HTTP_HEAD_BYTES_MAX`](super::limits::HTTP_HEAD_BYTES_MAX),
//! [`HTTP_BODY_BYTES_MAX`](super::limits::HTTP_BODY_BYTES_MAX)) however the
//! bytes arrive (one read or many), and so is time when [`Deadlines`] are
//! set (the server's side): a peer gets `idle` to start a request and
//! `whole` for all of it, head and body, not a fresh timeout per read, so
//! one byte every few hundred milliseconds does not hold a connection. The buffer
//! is zeroized on drop because bodies carry key material; it is allocated
//! once, large enough for any request or key-bearing response, so it never
//! reallocates (which would leave a copy behind) while holding one.
//!
//! [`HttpConn`] (`conn.rs`) reads and writes messages on a connection;
//! `head.rs` parses a message head, `response.rs` builds responses.

mod conn;
mod head;
mod response;
#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use zeroize::Zeroizing;

use super::limits::HTTP_HEADERS_MAX;

pub use conn::HttpConn;
pub use response::{reason_phrase, response_bytes};

/// Why an HTTP message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The transport failed (includes timeouts: `WouldBlock`/`TimedOut`).
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed mid-message")]
    Closed,
    /// The bytes are not an HTTP/1.1 message we accept.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// The head or body is larger than allowed.
    #[error("HTTP {what} of {bytes} bytes, limit {bytes_max}")]
    TooLarge {
        /// `head` or `body`.
        what: &'static str,
        /// Its size (or at least this much).
        bytes: u64,
        /// Our limit.
        bytes_max: u64,
    },
    /// The head has more header lines than allowed.
    #[error("more than {HTTP_HEADERS_MAX} header lines")]
    TooManyHeaders,
    /// `Transfer-Encoding` (chunked bodies) is not supported.
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    Chunked,
    /// The peer sent nothing of a request within the idle time.
    #[error("no request within {ms} ms")]
    Idle {
        /// The idle time allowed.
        ms: u64,
    },
    /// The peer started a request but did not finish it (head and body)
    /// within the time allowed for a whole request.
    #[error("request not complete within {ms} ms")]
    TooSlow {
        /// The time allowed for a whole request.
        ms: u64,
    },
}

/// Streams whose read and write timeouts can be set, so the codec can
/// bound how long a peer may take.
pub trait TimeoutStream {
    /// Sets both the read and the write timeout.
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimeoutStream for UnixStream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

/// How long a peer may take (the server's side of a connection).
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From the end of one request (or the connection's start) to the
    /// first byte of the next.
    pub idle: Duration,
    /// From the first byte of a request to its last (head and body), and
    /// for writing a whole response.
    pub whole: Duration,
}

/// A parsed request.
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The body (zeroized on drop).
    pub body: Zeroizing<Vec<u8>>,
    /// The peer wants the connection kept open.
    pub keep_alive: bool,
}

/// Whether `error` is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expired).
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

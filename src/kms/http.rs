//! A small, bounded HTTP/1.1 codec over any `Read + Write` stream, used by
//! both the server and the client.
//!
//! Only what the API needs: `Content-Length` bodies (no chunked encoding:
//! refused), keep-alive, `Expect: 100-continue`. Heads and bodies are
//! bounded ([`HTTP_HEAD_BYTES_MAX`], [`HTTP_BODY_BYTES_MAX`]) however the
//! bytes arrive (one read or many), and so is time when [`Deadlines`] are
//! set (the server's side): a peer gets `idle` to start a request and
//! `whole` for all of it, head and body, not a fresh timeout per read, so
//! one byte every few hundred milliseconds does not hold a connection. The buffer
//! is zeroized on drop because bodies carry key material; it is allocated
//! once, large enough for any request or key-bearing response, so it never
//! reallocates (which would leave a copy behind) while holding one.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use zeroize::{Zeroize, Zeroizing};

use super::limits::{HTTP_BODY_BYTES_MAX, HTTP_HEAD_BYTES_MAX, HTTP_HEADERS_MAX};

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

/// Head fields we act on.
struct Head {
    head_bytes: usize,
    content_bytes: usize,
    keep_alive: bool,
    expect_continue: bool,
    method: String,
    target: String,
    status: u16,
}

/// What the current read or write must finish by.
#[derive(Clone, Copy)]
enum Due {
    /// Waiting for a request's first byte.
    Idle(Instant),
    /// Inside a request or response.
    Whole(Instant),
}

/// One HTTP connection: the stream and its read buffer.
pub struct HttpConn<S> {
    stream: S,
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    body_bytes_max: usize,
    deadlines: Option<Deadlines>,
    due: Option<Due>,
}

impl<S: Read + Write + TimeoutStream> HttpConn<S> {
    /// Wraps `stream`; bodies up to `body_bytes_max` are accepted. Time is
    /// bounded by the stream's own timeouts only.
    pub fn new(stream: S, body_bytes_max: usize) -> Self {
        let initial = HTTP_HEAD_BYTES_MAX + HTTP_BODY_BYTES_MAX;
        Self {
            stream,
            buf: Zeroizing::new(vec![0u8; initial]),
            filled: 0,
            body_bytes_max,
            deadlines: None,
            due: None,
        }
    }

    /// Like [`HttpConn::new`], with every request read and response
    /// written within `deadlines`.
    pub fn with_deadlines(stream: S, body_bytes_max: usize, deadlines: Deadlines) -> Self {
        Self {
            deadlines: Some(deadlines),
            ..Self::new(stream, body_bytes_max)
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Reads the next request; `Ok(None)` on a clean close between requests.
    pub fn read_request(&mut self) -> Result<Option<Request>, HttpError> {
        let result = self.read_request_due();
        self.due = None;
        result
    }

    fn read_request_due(&mut self) -> Result<Option<Request>, HttpError> {
        if let Some(deadlines) = self.deadlines {
            let now = Instant::now();
            self.due = Some(if self.filled == 0 {
                Due::Idle(now + deadlines.idle)
            } else {
                Due::Whole(now + deadlines.whole)
            });
        }
        let Some(head) = self.read_head(true)? else {
            return Ok(None);
        };
        if head.expect_continue {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = self.read_body(&head)?;
        Ok(Some(Request {
            method: head.method,
            target: head.target,
            body,
            keep_alive: head.keep_alive,
        }))
    }

    /// Reads a response: status and body.
    pub fn read_response(&mut self) -> Result<(u16, Zeroizing<Vec<u8>>), HttpError> {
        let head = self.read_head(false)?.ok_or(HttpError::Closed)?;
        let body = self.read_body(&head)?;
        Ok((head.status, body))
    }

    /// Writes a JSON response in one `write`.
    pub fn write_response(&mut self, status: u16, body: &[u8], keep_alive: bool) -> io::Result<()> {
        let message = response_bytes(status, body, keep_alive);
        self.write_all_due(&message)
    }

    /// Writes a request in one `write`.
    pub fn write_request(&mut self, method: &str, target: &str, body: &[u8]) -> io::Result<()> {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: lsvkms\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.write_message(head.as_bytes(), body)
    }

    fn write_message(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        self.write_all_due(&joined(head, body))
    }

    fn write_all_due(&mut self, message: &[u8]) -> io::Result<()> {
        let Some(deadlines) = self.deadlines else {
            self.stream.write_all(message)?;
            return self.stream.flush();
        };
        // A peer that reads a byte at a time must not hold us either.
        let due = Instant::now() + deadlines.whole;
        let mut sent = 0;
        while sent < message.len() {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer too slow to take the response",
                ));
            }
            self.stream.set_timeouts(Some(left))?;
            match self.stream.write(&message[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(wrote) => sent += wrote,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.stream.flush()
    }

    /// Reads until a whole head is buffered and parses it. `None` if the
    /// peer closed before sending any byte of it. The head must end within
    /// [`HTTP_HEAD_BYTES_MAX`] bytes, whatever else the same reads brought.
    fn read_head(&mut self, is_request: bool) -> Result<Option<Head>, HttpError> {
        let mut scanned = 0;
        loop {
            let searched = self.filled.min(HTTP_HEAD_BYTES_MAX);
            // Resume three bytes back: the end marker may straddle reads.
            if let Some(end) = find_head_end(&self.buf[scanned..searched]) {
                let end = scanned + end;
                return parse_head(&self.buf[..end], is_request).map(Some);
            }
            scanned = searched.saturating_sub(3);
            if self.filled >= HTTP_HEAD_BYTES_MAX {
                return Err(HttpError::TooLarge {
                    what: "head",
                    bytes: self.filled as u64,
                    bytes_max: HTTP_HEAD_BYTES_MAX as u64,
                });
            }
            if self.fill()? == 0 {
                return if self.filled == 0 {
                    Ok(None)
                } else {
                    Err(HttpError::Closed)
                };
            }
        }
    }

    fn read_body(&mut self, head: &Head) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        if head.content_bytes > self.body_bytes_max {
            return Err(HttpError::TooLarge {
                what: "body",
                bytes: head.content_bytes as u64,
                bytes_max: self.body_bytes_max as u64,
            });
        }
        let total = head.head_bytes + head.content_bytes;
        if total > self.buf.len() {
            // Only non-key bodies (audit queries) are this large.
            self.buf.resize(total, 0);
        }
        while self.filled < total {
            if self.fill()? == 0 {
                return Err(HttpError::Closed);
            }
        }
        let mut body = Zeroizing::new(Vec::with_capacity(head.content_bytes));
        body.extend_from_slice(&self.buf[head.head_bytes..total]);
        self.buf.copy_within(total..self.filled, 0);
        let left = self.filled - total;
        // Wipe what the message left behind now: a kept-alive connection
        // (the daemon's to lsvkms) lives as long as the process, and a
        // key-bearing body would otherwise stay until a later message
        // happens to overwrite it.
        self.buf[left..self.filled].zeroize();
        self.filled = left;
        Ok(body)
    }

    fn fill(&mut self) -> Result<usize, HttpError> {
        let room = &mut self.buf[self.filled..];
        let room_bytes = room.len().min(HTTP_HEAD_BYTES_MAX + HTTP_BODY_BYTES_MAX);
        let read = loop {
            if let Some(due) = self.due {
                let left = match due {
                    Due::Idle(at) | Due::Whole(at) => at.saturating_duration_since(Instant::now()),
                };
                if left.is_zero() {
                    return Err(self.overdue(due));
                }
                self.stream.set_timeouts(Some(left))?;
            }
            match self.stream.read(&mut room[..room_bytes]) {
                Ok(read) => break read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) && self.due.is_some() => continue,
                Err(e) => return Err(HttpError::Io(e)),
            }
        };
        self.filled += read;
        if read > 0
            && let (Some(Due::Idle(_)), Some(deadlines)) = (self.due, self.deadlines)
        {
            // The request has started: from now on it has `whole` in all.
            self.due = Some(Due::Whole(Instant::now() + deadlines.whole));
        }
        Ok(read)
    }

    fn overdue(&self, due: Due) -> HttpError {
        let deadlines = self.deadlines.expect("a due time comes from deadlines");
        match due {
            Due::Idle(_) => HttpError::Idle {
                ms: deadlines.idle.as_millis() as u64,
            },
            Due::Whole(_) => HttpError::TooSlow {
                ms: deadlines.whole.as_millis() as u64,
            },
        }
    }
}

/// Whether `error` is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expired).
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S> HttpConn<S> {
    /// True if the connection holds bytes of a request not yet read.
    pub fn has_pending_bytes(&self) -> bool {
        self.filled > 0
    }
}

/// A whole JSON response, head and body, in a zeroized buffer (bodies may
/// carry a key).
pub fn response_bytes(status: u16, body: &[u8], keep_alive: bool) -> Zeroizing<Vec<u8>> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {connection}\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    joined(head.as_bytes(), body)
}

fn joined(head: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut message = Zeroizing::new(Vec::with_capacity(head.len() + body.len()));
    message.extend_from_slice(head);
    message.extend_from_slice(body);
    message
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn parse_head(bytes: &[u8], is_request: bool) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HTTP_HEADERS_MAX];
    let malformed = |e: httparse::Error| match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        other => HttpError::Malformed(other.to_string()),
    };
    let (method, target, status, version, list) = if is_request {
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(bytes).map_err(malformed)?;
        if parsed.is_partial() {
            return Err(HttpError::Malformed("partial head".into()));
        }
        (
            request.method.unwrap_or("").to_owned(),
            request.path.unwrap_or("").to_owned(),
            0,
            request.version,
            request.headers,
        )
    } else {
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(bytes).map_err(malformed)?;
        if parsed.is_partial() {
            return Err(HttpError::Malformed("partial head".into()));
        }
        (
            String::new(),
            String::new(),
            response.code.unwrap_or(0),
            response.version,
            response.headers,
        )
    };
    let mut head = Head {
        head_bytes: bytes.len(),
        content_bytes: 0,
        keep_alive: version == Some(1),
        expect_continue: false,
        method,
        target,
        status,
    };
    apply_headers(&mut head, list)?;
    Ok(head)
}

fn apply_headers(head: &mut Head, headers: &[httparse::Header<'_>]) -> Result<(), HttpError> {
    let mut length_seen = false;
    for header in headers {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HttpError::Malformed("header not UTF-8".into()))?
            .trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let bytes: usize = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length".into()))?;
            if length_seen && bytes != head.content_bytes {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            length_seen = true;
            head.content_bytes = bytes;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                head.keep_alive = false;
            } else if value.contains("keep-alive") {
                head.keep_alive = true;
            }
        } else if header.name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(())
}

/// The reason phrase of the statuses we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn request_and_response_round_trip_with_pipelining() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut client = HttpConn::new(a, HTTP_BODY_BYTES_MAX);
        let mut server = HttpConn::new(b, HTTP_BODY_BYTES_MAX);
        client
            .write_request("POST", "/v1/unwrap", b"{\"a\":1}")
            .unwrap();
        client.write_request("GET", "/v1/health", b"").unwrap();
        let first = server.read_request().unwrap().unwrap();
        assert_eq!(
            (first.method.as_str(), first.target.as_str()),
            ("POST", "/v1/unwrap")
        );
        assert_eq!(&first.body[..], b"{\"a\":1}");
        assert!(first.keep_alive);
        let second = server.read_request().unwrap().unwrap();
        assert_eq!(second.target, "/v1/health");
        server.write_response(403, b"{}", true).unwrap();
        let (status, body) = client.read_response().unwrap();
        assert_eq!((status, &body[..]), (403, &b"{}"[..]));
        drop(client);
        assert!(server.read_request().unwrap().is_none(), "clean close");
    }

    #[test]
    fn oversized_and_chunked_are_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::new(b, 16);
        a.write_all(b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n")
            .unwrap();
        assert!(matches!(
            server.read_request(),
            Err(HttpError::TooLarge { what: "body", .. })
        ));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::new(b, 16);
        a.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        assert!(matches!(server.read_request(), Err(HttpError::Chunked)));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::new(b, 16);
        a.write_all(&vec![b'a'; HTTP_HEAD_BYTES_MAX + 10]).unwrap();
        assert!(matches!(
            server.read_request(),
            Err(HttpError::TooLarge { what: "head", .. })
        ));
    }

    /// One write of a head far over the limit, complete (it ends in a blank
    /// line): refused as a head, whatever arrived in the same read.
    #[test]
    fn the_head_limit_holds_when_the_head_arrives_in_one_read() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::new(b, HTTP_BODY_BYTES_MAX);
        let big = format!(
            "GET /v1/health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(60_000)
        );
        let writer = std::thread::spawn(move || a.write_all(big.as_bytes()));
        let result = server.read_request();
        assert!(
            matches!(result, Err(HttpError::TooLarge { what: "head", .. })),
            "{:?}",
            result.err()
        );
        drop(server);
        let _ = writer.join();
        // Just under the limit is fine, in one read or in many.
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::new(b, HTTP_BODY_BYTES_MAX);
        let line = "GET /v1/health HTTP/1.1\r\nX-Fill: ";
        let fill = HTTP_HEAD_BYTES_MAX - line.len() - 4;
        let head = format!("{line}{}\r\n\r\n", "b".repeat(fill));
        assert_eq!(head.len(), HTTP_HEAD_BYTES_MAX);
        a.write_all(head.as_bytes()).unwrap();
        assert!(server.read_request().unwrap().is_some());
        let mut headers = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=HTTP_HEADERS_MAX {
            headers.push_str(&format!("X-{i}: 1\r\n"));
        }
        headers.push_str("\r\n");
        a.write_all(headers.as_bytes()).unwrap();
        assert!(matches!(
            server.read_request(),
            Err(HttpError::TooManyHeaders)
        ));
    }

    const TEST_DEADLINES: Deadlines = Deadlines {
        idle: Duration::from_millis(400),
        whole: Duration::from_millis(300),
    };

    /// A byte every 50 ms never lets a per-read timeout fire, but the
    /// request as a whole is cut off at its deadline.
    #[test]
    fn a_trickled_request_is_cut_off_at_its_deadline() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::with_deadlines(b, HTTP_BODY_BYTES_MAX, TEST_DEADLINES);
        let trickler = std::thread::spawn(move || {
            for byte in b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
                .iter()
                .cycle()
                .take(200)
            {
                if a.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let result = server.read_request();
        assert!(
            matches!(result, Err(HttpError::TooSlow { ms: 300 })),
            "{:?}",
            result.err()
        );
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        drop(server);
        trickler.join().unwrap();
    }

    #[test]
    fn a_silent_peer_is_idle_and_a_prompt_one_is_served() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::with_deadlines(b, HTTP_BODY_BYTES_MAX, TEST_DEADLINES);
        assert!(matches!(
            server.read_request(),
            Err(HttpError::Idle { ms: 400 })
        ));
        let mut client = HttpConn::new(a, HTTP_BODY_BYTES_MAX);
        client.write_request("POST", "/v1/unwrap", b"{}").unwrap();
        assert_eq!(server.read_request().unwrap().unwrap().target, "/v1/unwrap");
    }
}

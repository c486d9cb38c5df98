//! One HTTP connection: reading requests and responses within the
//! connection's deadlines, writing messages in one piece.

use std::io::{self, Read, Write};
use std::time::Instant;

use zeroize::{Zeroize, Zeroizing};

use super::head::{Head, find_head_end, parse_head};
use super::response::{joined, response_bytes};
use super::{Deadlines, HttpError, Request, TimeoutStream, is_timeout};
use crate::kms::limits::{HTTP_BODY_BYTES_MAX, HTTP_HEAD_BYTES_MAX};

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

impl<S> HttpConn<S> {
    /// True if the connection holds bytes of a request not yet read.
    pub fn has_pending_bytes(&self) -> bool {
        self.filled > 0
    }
}

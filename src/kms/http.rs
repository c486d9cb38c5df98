//! A small, bounded HTTP/1.1 codec over any `Read + Write` stream, used by
//! both the server and the client.
//!
//! Only what the API needs: `Content-Length` bodies (no chunked encoding:
//! refused), keep-alive, `Expect: 100-continue`. Heads and bodies are
//! bounded ([`HTTP_HEAD_BYTES_MAX`], [`HTTP_BODY_BYTES_MAX`]). The buffer
//! is zeroized on drop because bodies carry key material; it is allocated
//! once, large enough for any request or key-bearing response, so it never
//! reallocates (which would leave a copy behind) while holding one.

use std::io::{self, Read, Write};

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

/// One HTTP connection: the stream and its read buffer.
pub struct HttpConn<S> {
    stream: S,
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    body_bytes_max: usize,
}

impl<S: Read + Write> HttpConn<S> {
    /// Wraps `stream`; bodies up to `body_bytes_max` are accepted.
    pub fn new(stream: S, body_bytes_max: usize) -> Self {
        let initial = HTTP_HEAD_BYTES_MAX + HTTP_BODY_BYTES_MAX;
        Self {
            stream,
            buf: Zeroizing::new(vec![0u8; initial]),
            filled: 0,
            body_bytes_max,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Reads the next request; `Ok(None)` on a clean close between requests.
    pub fn read_request(&mut self) -> Result<Option<Request>, HttpError> {
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
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {connection}\r\n\r\n",
            reason_phrase(status),
            body.len()
        );
        self.write_message(head.as_bytes(), body)
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
        let mut message = Zeroizing::new(Vec::with_capacity(head.len() + body.len()));
        message.extend_from_slice(head);
        message.extend_from_slice(body);
        self.stream.write_all(&message)?;
        self.stream.flush()
    }

    /// Reads until a whole head is buffered and parses it. `None` if the
    /// peer closed before sending any byte of it.
    fn read_head(&mut self, is_request: bool) -> Result<Option<Head>, HttpError> {
        loop {
            if let Some(end) = find_head_end(&self.buf[..self.filled]) {
                return parse_head(&self.buf[..end], is_request).map(Some);
            }
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
            match self.stream.read(&mut room[..room_bytes]) {
                Ok(read) => break read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HttpError::Io(e)),
            }
        };
        self.filled += read;
        Ok(read)
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn parse_head(bytes: &[u8], is_request: bool) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HTTP_HEADERS_MAX];
    let malformed = |e: httparse::Error| HttpError::Malformed(e.to_string());
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
            return Err(HttpError::Malformed(
                "Transfer-Encoding is not supported; send Content-Length".into(),
            ));
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
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
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
        assert!(matches!(
            server.read_request(),
            Err(HttpError::Malformed(_))
        ));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut server = HttpConn::new(b, 16);
        a.write_all(&vec![b'a'; HTTP_HEAD_BYTES_MAX + 10]).unwrap();
        assert!(matches!(
            server.read_request(),
            Err(HttpError::TooLarge { what: "head", .. })
        ));
    }
}

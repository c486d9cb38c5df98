//! Parsing a message head (request or status line and headers) into the
//! few fields the codec acts on.

use super::HttpError;
use crate::kms::limits::HTTP_HEADERS_MAX;

/// Head fields we act on.
pub(super) struct Head {
    /// Bytes of the head, blank line included (the body starts here).
    pub head_bytes: usize,
    /// `Content-Length` (0 without one).
    pub content_bytes: usize,
    /// The peer wants the connection kept open.
    pub keep_alive: bool,
    /// The peer waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// A request's method (empty in a response).
    pub method: String,
    /// A request's target (empty in a response).
    pub target: String,
    /// A response's status (0 in a request).
    pub status: u16,
}

/// Where the head ends (just past its blank line), if it is all in `bytes`.
pub(super) fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Parses a whole head (`bytes` ends with its blank line).
pub(super) fn parse_head(bytes: &[u8], is_request: bool) -> Result<Head, HttpError> {
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

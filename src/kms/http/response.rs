//! Building messages: a response's head and body in one zeroized buffer,
//! and the reason phrases of the statuses lsvkms sends.

use zeroize::Zeroizing;

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

/// `head` and `body` in one zeroized buffer, to be written in one piece.
pub(super) fn joined(head: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut message = Zeroizing::new(Vec::with_capacity(head.len() + body.len()));
    message.extend_from_slice(head);
    message.extend_from_slice(body);
    message
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

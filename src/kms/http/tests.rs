//! The codec against real socket pairs: pipelining, limits, deadlines.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{Deadlines, HttpConn, HttpError};
use crate::kms::limits::{HTTP_BODY_BYTES_MAX, HTTP_HEAD_BYTES_MAX, HTTP_HEADERS_MAX};

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

//! The control socket end to end: a real listener and client in-process.

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::protocol::ControlReply;

use super::protocol::{Line, REQUEST_BYTES_MAX, read_line};
use super::server::may_control;
use super::*;

/// Emits three progress values per request, then answers by op:
/// `snapshot-create` → ok, `snapshot-delete` → not-found, `compact` → waits
/// until the test says go, `snapshot-list` → panics, `status` → ok.
struct Dummy {
    compact_started: Mutex<Sender<()>>,
    compact_go: Mutex<Receiver<()>>,
}

impl ControlHandler for Dummy {
    fn handle(
        &self,
        request: ControlRequest,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ControlError> {
        match request {
            ControlRequest::SnapshotCreate { name } => {
                for done in 1..=3 {
                    progress(json!({ "done": done, "total": 3 }));
                }
                Ok(json!({ "created": name }))
            }
            ControlRequest::SnapshotDelete { name } => Err(ControlError::new(
                ControlError::NOT_FOUND,
                format!("no snapshot {name}"),
            )),
            ControlRequest::Compact { .. } => {
                self.compact_started.lock().unwrap().send(()).unwrap();
                progress(json!("compacting"));
                // The test answers `status` meanwhile, then lets us go.
                self.compact_go
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(20))
                    .map_err(|_| ControlError::new(ControlError::BUSY, "never released"))?;
                Ok(json!({ "compacted": true }))
            }
            ControlRequest::SnapshotList => panic!("handler bug"),
            ControlRequest::Status => Ok(json!({ "state": "serving" })),
            ControlRequest::Rotate { .. }
            | ControlRequest::Rewrap
            | ControlRequest::SetPolicy { .. }
            | ControlRequest::Flatten
            | ControlRequest::Scrub
            | ControlRequest::HandOver => Err(ControlError::new(
                ControlError::BAD_REQUEST,
                "not in this test",
            )),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: Option<ControlServer>,
    compact_started: Receiver<()>,
    compact_go: Sender<()>,
}

fn start_at(path: &Path) -> anyhow::Result<(ControlServer, Receiver<()>, Sender<()>)> {
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let handler = Arc::new(Dummy {
        compact_started: Mutex::new(started_tx),
        compact_go: Mutex::new(go_rx),
    });
    let server = ControlServer::start(path, handler)?;
    Ok((server, started_rx, go_tx))
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = control_socket_path(dir.path());
    let (server, compact_started, compact_go) = start_at(&path).unwrap();
    Fixture {
        _dir: dir,
        path,
        server: Some(server),
        compact_started,
        compact_go,
    }
}

fn call_collect(path: &Path, request: &ControlRequest) -> (Result<Value, CallError>, Vec<Value>) {
    let mut progress = Vec::new();
    let result = call(path, request, &mut |v| progress.push(v.clone()));
    (result, progress)
}

fn status(path: &Path) -> Value {
    call(path, &ControlRequest::Status, &mut |_| {}).unwrap()
}

/// Sends raw bytes, returns every line of the answer.
fn raw(path: &Path, bytes: &[u8]) -> Vec<Value> {
    let mut stream = UnixStream::connect(path).unwrap();
    // The write fails once the daemon refuses an oversize line: fine.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    // A daemon that closes with our bytes unread resets the connection after
    // its answer: the next read fails with ConnectionReset, not end of file.
    BufReader::new(stream)
        .lines()
        .map_while(|l| match l {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            l => Some(l.unwrap()),
        })
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

#[test]
fn progress_lines_then_ok() {
    let f = fixture();
    let request = ControlRequest::SnapshotCreate {
        name: "before-upgrade".into(),
    };
    let (result, progress) = call_collect(&f.path, &request);
    assert_eq!(result.unwrap(), json!({ "created": "before-upgrade" }));
    assert_eq!(
        progress,
        (1..=3)
            .map(|d| json!({ "done": d, "total": 3 }))
            .collect::<Vec<_>>()
    );
    // The same, as the wire shows it.
    let lines = raw(&f.path, b"{\"op\":\"snapshot-create\",\"name\":\"x\"}\n");
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], json!({ "progress": { "done": 1, "total": 3 } }));
    assert_eq!(lines[3], json!({ "ok": { "created": "x" } }));
}

#[test]
fn handler_errors_arrive_as_refused_with_their_kind() {
    let f = fixture();
    let request = ControlRequest::SnapshotDelete {
        name: "nope".into(),
    };
    match call(&f.path, &request, &mut |_| {}) {
        Err(CallError::Refused(error)) => {
            assert_eq!(error.kind, ControlError::NOT_FOUND);
            assert_eq!(error.message, "no snapshot nope");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let lines = raw(&f.path, b"{\"op\":\"snapshot-delete\",\"name\":\"n\"}\n");
    assert_eq!(
        lines,
        vec![json!({ "error": { "kind": "not-found", "message": "no snapshot n" } })]
    );
}

#[test]
fn a_panicking_handler_is_an_internal_error_and_the_server_lives_on() {
    let f = fixture();
    match call(&f.path, &ControlRequest::SnapshotList, &mut |_| {}) {
        Err(CallError::Refused(error)) => assert_eq!(error.kind, ControlError::INTERNAL),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(status(&f.path), json!({ "state": "serving" }));
}

#[test]
fn malformed_requests_get_an_error_line_and_the_server_keeps_working() {
    let f = fixture();
    for bad in [
        &b"not json\n"[..],
        b"{\"op\":\"format-disk\"}\n",
        b"{\"op\":\"snapshot-create\"}\n",
        b"{\"op\":\"compact\",\"rate_mib\":5}\n",
        b"{\"op\":\"snapshot-create\",\"name\":7}\n",
        b"\xff\xfe\n",
        b"\n",
        b"[1,2",
    ] {
        let lines = raw(&f.path, bad);
        assert_eq!(lines.len(), 1, "{bad:?}: {lines:?}");
        assert_eq!(lines[0]["error"]["kind"], "bad-request", "{bad:?}");
    }
    // A client that connects and leaves without a word gets nothing.
    drop(UnixStream::connect(&f.path).unwrap());
    assert_eq!(status(&f.path), json!({ "state": "serving" }));
}

#[test]
fn oversize_requests_are_refused() {
    let f = fixture();
    let request = ControlRequest::SnapshotCreate {
        name: "x".repeat(REQUEST_BYTES_MAX + 1),
    };
    match call(&f.path, &request, &mut |_| {}) {
        Err(CallError::Refused(error)) => {
            assert_eq!(error.kind, ControlError::BAD_REQUEST);
            assert!(error.message.contains("longer than"), "{}", error.message);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // Far bigger than the socket buffer, and no newline at all.
    let lines = raw(&f.path, &vec![b'{'; 4 * 1024 * 1024]);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["error"]["kind"], "bad-request");
    // Just under the limit is fine.
    let name = "y".repeat(REQUEST_BYTES_MAX - 64);
    let request = ControlRequest::SnapshotCreate { name: name.clone() };
    assert_eq!(
        call(&f.path, &request, &mut |_| {}).unwrap(),
        json!({ "created": name })
    );
}

#[test]
fn status_is_answered_while_a_slow_request_runs() {
    let f = fixture();
    let path = f.path.clone();
    let compact = std::thread::spawn(move || {
        let request = ControlRequest::Compact {
            rate_mib_s: Some(50),
            live_ratio_max: None,
        };
        call_collect(&path, &request)
    });
    f.compact_started
        .recv_timeout(Duration::from_secs(20))
        .expect("compaction started");
    // The compaction is blocked until we say go: this answer cannot wait for it.
    assert_eq!(status(&f.path), json!({ "state": "serving" }));
    f.compact_go.send(()).unwrap();
    let (result, progress) = compact.join().unwrap();
    assert_eq!(result.unwrap(), json!({ "compacted": true }));
    assert_eq!(progress, vec![json!("compacting")]);
}

#[test]
fn a_stale_socket_is_replaced_but_live_sockets_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = control_socket_path(dir.path());
    // A daemon that died without cleaning up leaves its socket file behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(matches!(
        call(&path, &ControlRequest::Status, &mut |_| {}),
        Err(CallError::NotServed { .. })
    ));
    let (server, _, _) = start_at(&path).unwrap();
    assert_eq!(status(&path), json!({ "state": "serving" }));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second server on a live socket is refused, and the first goes on.
    let error = start_at(&path).err().expect("live socket refused");
    assert!(error.to_string().contains("in use"), "{error:#}");
    assert_eq!(status(&path), json!({ "state": "serving" }));
    drop(server);

    // Not a socket: left alone.
    std::fs::write(&path, b"precious").unwrap();
    let error = start_at(&path).err().expect("regular file refused");
    assert!(error.to_string().contains("not a socket"), "{error:#}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn stop_removes_the_socket_and_callers_then_see_not_served() {
    let mut f = fixture();
    assert_eq!(status(&f.path), json!({ "state": "serving" }));
    f.server.take().unwrap().stop();
    assert!(!f.path.exists());
    assert!(matches!(
        call(&f.path, &ControlRequest::Status, &mut |_| {}),
        Err(CallError::NotServed { .. })
    ));
    // A directory that does not exist: not served either.
    assert!(matches!(
        call(
            Path::new("/nonexistent/volume/control.sock"),
            &ControlRequest::Status,
            &mut |_| {}
        ),
        Err(CallError::NotServed { .. })
    ));
}

#[test]
fn paths_longer_than_sun_path_work_through_proc_self_fd() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = dir.path().to_owned();
    for _ in 0..4 {
        volume.push("a-rather-long-directory-name-for-a-volume");
    }
    std::fs::create_dir_all(&volume).unwrap();
    let path = control_socket_path(&volume);
    assert!(path.as_os_str().len() > 108);
    // A stale socket there too is found and replaced.
    {
        let address = SocketAddrPath::new(&path).unwrap();
        drop(UnixListener::bind(address.path()).unwrap());
    }
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let (server, _, _) = start_at(&path).unwrap();
    assert_eq!(status(&path), json!({ "state": "serving" }));
    drop(server);
    assert!(!path.exists());

    // A file name that alone is too long cannot be helped: a clear error.
    let long_name = dir.path().join("s".repeat(120));
    let error = start_at(&long_name).err().expect("too long");
    assert!(
        error.to_string().contains("UNIX socket address"),
        "{error:#}"
    );
    match call(&long_name, &ControlRequest::Status, &mut |_| {}) {
        Err(CallError::Transport { source, .. }) => {
            assert!(source.to_string().contains("UNIX socket address"));
        }
        other => panic!("expected Transport, got {other:?}"),
    }
}

#[test]
fn requests_have_a_stable_wire_format() {
    let cases = [
        (
            ControlRequest::SnapshotCreate { name: "a".into() },
            json!({ "op": "snapshot-create", "name": "a" }),
        ),
        (
            ControlRequest::SnapshotDelete { name: "a".into() },
            json!({ "op": "snapshot-delete", "name": "a" }),
        ),
        (
            ControlRequest::SnapshotList,
            json!({ "op": "snapshot-list" }),
        ),
        (
            ControlRequest::Compact {
                rate_mib_s: Some(64),
                live_ratio_max: Some(0.5),
            },
            json!({ "op": "compact", "rate_mib_s": 64, "live_ratio_max": 0.5 }),
        ),
        (
            ControlRequest::Compact {
                rate_mib_s: None,
                live_ratio_max: None,
            },
            json!({ "op": "compact" }),
        ),
        (ControlRequest::Status, json!({ "op": "status" })),
    ];
    for (request, wire) in cases {
        assert_eq!(serde_json::to_value(&request).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<ControlRequest>(wire).unwrap(),
            request
        );
    }
    let reply = ControlReply::Error(ControlError::new(ControlError::BUSY, "later"));
    assert_eq!(
        serde_json::to_value(&reply).unwrap(),
        json!({ "error": { "kind": "busy", "message": "later" } })
    );
}

#[test]
fn only_our_uid_or_root_may_control() {
    assert!(may_control(1000, 1000));
    assert!(may_control(0, 1000));
    assert!(may_control(0, 0));
    assert!(!may_control(1001, 1000));
    assert!(!may_control(1000, 0));
}

#[test]
fn read_line_is_bounded() {
    let read = |bytes: &[u8], max| read_line(&mut &bytes[..], max).unwrap();
    assert!(matches!(read(b"", 4), Line::Eof));
    assert!(matches!(read(b"abcd\nrest", 4), Line::Text(l) if l == b"abcd"));
    assert!(matches!(read(b"abc", 4), Line::Text(l) if l == b"abc"));
    assert!(matches!(read(b"abcde\n", 4), Line::TooLong));
    assert!(matches!(read(b"abcde", 4), Line::TooLong));
}

/// Set in the environment of [`as_another_user_child`] when
/// [`other_users_are_refused`] runs it as another uid.
const CHILD_SOCKET_ENV: &str = "LSVBLK_TEST_CONTROL_SOCKET";

#[test]
fn other_users_are_refused() {
    use std::os::unix::process::CommandExt;
    if lsvblk::kms::fsutil::effective_uid() != 0 {
        eprintln!("skipped: running a client as another uid needs root");
        return;
    }
    let f = fixture();
    // Open the door the file modes keep shut, so that SO_PEERCRED is what
    // refuses the stranger.
    let dir = f.path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "control::tests::as_another_user_child",
            "--nocapture",
        ])
        .env(CHILD_SOCKET_ENV, &f.path)
        .uid(65534)
        .gid(65534)
        .output();
    let output = match output {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // E.g. a checkout under a directory only root may enter.
            eprintln!("skipped: uid 65534 cannot run the test binary: {e}");
            return;
        }
        output => output.unwrap(),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("child-result: refused denied"), "{stdout}");
    // We (root) are still served.
    assert_eq!(status(&f.path), json!({ "state": "serving" }));
}

/// Not a test of its own: the client half of [`other_users_are_refused`]
/// (a no-op unless that test runs it).
#[test]
fn as_another_user_child() {
    let Some(path) = std::env::var_os(CHILD_SOCKET_ENV) else {
        return;
    };
    match call(Path::new(&path), &ControlRequest::Status, &mut |_| {}) {
        Err(CallError::Refused(error)) => println!("child-result: refused {}", error.kind),
        other => println!("child-result: {other:?}"),
    }
}

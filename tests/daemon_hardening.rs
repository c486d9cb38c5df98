//! `lsvblk serve` against a key service that is not there yet, and the
//! daemon's sockets and files against other local users (a forked child
//! under another uid, `kit/stranger.rs`).

mod kit;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use kit::daemon::{Daemon, create_volume, is_listening};
use kit::kms::Kms;
use kit::stranger::{NOBODY, Stranger, connect, unix_address};

const MIB: u64 = 1 << 20;

/// lsvkms restarting (down for a second) while a daemon starts: the daemon
/// retries until it answers, then serves.
#[test]
fn serve_waits_for_an_lsvkms_that_comes_back_within_the_kms_timeout() {
    let mut kms = Kms::start();
    let volume = create_volume(&kms, MIB, &["alice"], 4096);
    let token = kms.token("alice");
    kms.stop();
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&volume, &kms, &token, &["--kms-timeout", "60s"]);
    std::thread::sleep(Duration::from_millis(1500));
    kms.serve();
    let socket = daemon.socket.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_listening(&socket) {
        assert!(
            Instant::now() < deadline,
            "daemon never served:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        daemon.stderr().contains("retrying"),
        "it said it was retrying:\n{}",
        daemon.stderr()
    );
    assert!(daemon.sigterm_and_wait().success());
}

/// Every file under `dir` (two levels, as a volume is laid out) whose mode
/// lets group or others in, with its mode.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            if meta.mode() & 0o077 != 0 {
                found.push(format!(
                    "{} {:o}",
                    entry.path().display(),
                    meta.mode() & 0o7777
                ));
            }
        }
    }
    found
}

/// Under `umask 000` the daemon's socket is 0600 and its files private; a
/// process of another user cannot connect (the kernel refuses: no write
/// permission on the socket file), and the daemon serves its own client on.
#[test]
fn under_umask_000_the_socket_and_files_are_private_and_another_user_cannot_connect() {
    // The daemon inherits the umask; so would anything else this test
    // binary starts meanwhile (nothing that cares).
    // SAFETY: umask(2) only sets the process's file-creation mask.
    let previous = unsafe { libc::umask(0) };
    let kms = Kms::start();
    let volume = create_volume(&kms, MIB, &["alice"], 4096);
    let token = kms.token("alice");
    let mut daemon = Daemon::start(&volume, &kms, &token, &[]);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let mut client = daemon.client(1);
    client.write(0, 0, &[7; 4096]).unwrap();
    client.flush(0).unwrap();

    let socket_mode = std::fs::metadata(&daemon.socket).unwrap().mode() & 0o777;
    assert_eq!(socket_mode, 0o600, "vhost-user socket mode");
    // The test's directory is private: open it so that only the socket's
    // own mode stands between another user and the daemon.
    std::fs::set_permissions(kms.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let address = unix_address(&daemon.socket);
    let mut stranger = Stranger::spawn(NOBODY, NOBODY, || {
        let fd = connect(&address);
        i32::from(fd >= 0)
    });
    assert_eq!(
        stranger.wait(Duration::from_secs(10)),
        0,
        "uid {NOBODY} connected to the vhost-user socket"
    );
    assert_eq!(client.read(0, 0, 4096).unwrap(), vec![7; 4096]);
    drop(client);
    assert!(daemon.sigterm_and_wait().success());
    let open = open_to_others(&volume);
    assert!(open.is_empty(), "volume files open to others: {open:?}");
}

#[test]
fn a_token_file_others_may_read_is_refused_with_64() {
    let kms = Kms::start();
    let volume = create_volume(&kms, MIB, &["alice"], 4096);
    let token = kms.token("alice");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut daemon = Daemon::spawn(&volume, &kms, &token, &[]);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(64), "{status}:\n{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!daemon.socket.exists());
}

/// What a process sees after sending VHOST_USER_GET_FEATURES on a new
/// connection to `address`: 0 an answer, 1 the connection closed
/// unanswered, 2 nothing within 5 s, 3 no connection. System calls only
/// (it runs in a forked child).
fn ask_features(address: &libc::sockaddr_un) -> i32 {
    let fd = connect(address);
    if fd < 0 {
        return 3;
    }
    // Header: request 1 (GET_FEATURES), flags 1 (protocol version 1), size 0.
    let request: [u8; 12] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let mut reply = [0u8; 20];
    // SAFETY: send/poll/recv/close on the fd we own, with valid buffers of
    // the lengths passed; MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
    unsafe {
        libc::send(
            fd,
            request.as_ptr().cast(),
            request.len(),
            libc::MSG_NOSIGNAL,
        );
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut poll, 1, 5000) <= 0 {
            libc::close(fd);
            return 2;
        }
        let got = libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0);
        libc::close(fd);
        if got > 0 { 0 } else { 1 }
    }
}

/// [`ask_features`] run by uid 65534 on the socket at `socket`.
fn ask_features_as_nobody(socket: &Path) -> i32 {
    let address = unix_address(socket);
    Stranger::spawn(NOBODY, NOBODY, || ask_features(&address)).wait(Duration::from_secs(10))
}

/// The peer of every vhost-user connection is checked before a message is
/// read: with the socket file open to everyone (0666), uid 65534 is closed
/// on unanswered and logged while the daemon's own user is served; with
/// `--allow-uid 65534` it gets its answer.
#[test]
fn the_vhost_user_socket_serves_only_allowed_peers_whatever_its_mode() {
    let kms = Kms::start();
    let volume = create_volume(&kms, MIB, &["alice"], 4096);
    let token = kms.token("alice");
    std::fs::set_permissions(kms.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open_to_all = ["--socket-mode", "0666"];
    let mut daemon = Daemon::start(&volume, &kms, &token, &open_to_all);
    assert_eq!(
        ask_features_as_nobody(&daemon.socket),
        1,
        "uid {NOBODY} was not closed on unanswered:\n{}",
        daemon.stderr()
    );
    assert!(
        daemon.stderr().contains("vhost-user connection refused"),
        "{}",
        daemon.stderr()
    );
    let mut client = daemon.client(1);
    client.write(0, 0, &[3; 4096]).unwrap();
    assert_eq!(client.read(0, 0, 4096).unwrap(), vec![3; 4096]);
    drop(client);
    assert!(daemon.sigterm_and_wait().success());

    let nobody = NOBODY.to_string();
    let args = [&open_to_all[..], &["--allow-uid", &nobody]].concat();
    let mut daemon = Daemon::start(&volume, &kms, &token, &args);
    assert_eq!(
        ask_features_as_nobody(&daemon.socket),
        0,
        "uid {NOBODY}, allowed, got no answer:\n{}",
        daemon.stderr()
    );
    assert!(daemon.sigterm_and_wait().success());
}

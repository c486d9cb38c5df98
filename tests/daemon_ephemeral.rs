//! Ephemeral volumes (`lsvblk serve --ephemeral`), end to end with real
//! `lsvblk` processes and libblkio as the VMM: the data key is made in the
//! daemon's locked memory and never reaches lsvkms or any file; the data is
//! encrypted on disk like any volume's; snapshots are refused; after
//! `kill -9` the directory left behind is refused by every command (its key
//! died with the daemon) and deleted by the next `serve --ephemeral`; a
//! clean stop deletes it at once. About 5 s.

mod kit;

use std::os::unix::fs::FileExt;
use std::path::Path;

use lsvblk::crypto::{KeyId, KeyKind};
use serde_json::Value;

use kit::cli::{assert_refused, run_lsvblk};
use kit::daemon::Daemon;
use kit::dirs::files_with_contents;
use kit::disk::Disk;
use kit::kms::Kms;
use kit::secrets::{leaks, locked_mappings};

const MIB: u64 = 1 << 20;
/// sysexits EX_DATAERR: what lsvblk answers for a volume it cannot read.
const DATA: i32 = 65;

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The key id `volume.json` names (read as plain JSON: lsvblk itself
/// refuses the file in any process but the daemon).
fn current_key_id(dir: &Path) -> KeyId {
    let text = std::fs::read_to_string(dir.join("volume.json")).unwrap();
    let superblock: Value = serde_json::from_str(&text).unwrap();
    assert!(
        superblock["keys"][0]["wrapped_blob"].is_null(),
        "never wrapped: {superblock}"
    );
    superblock["current_key_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The daemon's data key, found in its locked memory by its id: the 64
/// bytes, at any 8-byte offset of a locked mapping, whose key id is `id`.
fn key_in_locked_memory(pid: u32, id: KeyId) -> Vec<u8> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for range in locked_mappings(pid) {
        let (start, end) = range.trim().split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut bytes = vec![0u8; (end - start) as usize];
        let Ok(read) = mem.read_at(&mut bytes, start) else {
            continue;
        };
        bytes.truncate(read);
        for at in (0..bytes.len().saturating_sub(63)).step_by(8) {
            let window = &bytes[at..at + 64];
            let kinds = [KeyKind::Aes256Xts, KeyKind::Aes256XtsMac];
            if window.iter().any(|&b| b != 0)
                && kinds.iter().any(|k| KeyId::derive(*k, window) == id)
            {
                return window.to_vec();
            }
        }
    }
    panic!("key {id} not in the locked memory of {pid}");
}

#[test]
fn an_ephemeral_key_never_leaves_the_daemon_and_a_killed_daemons_leftover_is_unreadable_and_removed()
 {
    let kms = Kms::start();
    let dir = kms.fresh_path("ephemeral", "d");
    let mut daemon = Daemon::start_ephemeral(&kms, &dir, "8M");
    let mut disk = Disk::zeros(8 * MIB);
    {
        let mut client = daemon.client(1);
        disk.write(&mut client, "scratch data", 0, 2 * MIB);
        client.flush(0).unwrap();
        disk.check(&mut client, "served back");
    }

    // The key is in the daemon's locked memory and nowhere else.
    let key = key_in_locked_memory(daemon.pid(), current_key_id(&dir));
    let mut files = files_with_contents(&dir);
    files.extend(files_with_contents(kms.state_dir()));
    assert!(files.len() > 3, "{files:?}");
    for (file, bytes) in &files {
        assert_eq!(leaks(bytes, &key), None, "the key is in {}", file.display());
    }
    assert_eq!(
        leaks(daemon.stderr().as_bytes(), &key),
        None,
        "the key is in the log"
    );
    let audit = std::fs::read_to_string(kms.audit_path()).unwrap();
    assert!(audit.trim().is_empty(), "lsvkms was never asked: {audit}");

    // No snapshot while it is served: it could never be read.
    let out = run_lsvblk(&["snapshot", "create", path(&dir), "s1"]);
    assert_refused(
        "snapshot of an ephemeral volume",
        &out,
        DATA,
        &["ephemeral", "no inspect, snapshot"],
    );

    // kill -9: the directory stays, ciphertext only, and nothing opens it.
    daemon.kill9();
    let plaintext = &disk.bytes()[..4096];
    for (file, bytes) in files_with_contents(&dir) {
        assert!(
            !bytes.windows(plaintext.len()).any(|w| w == plaintext),
            "plaintext in {}",
            file.display()
        );
    }
    let token = kms.token("alice");
    for args in [
        vec!["inspect", "--volume", path(&dir)],
        vec!["snapshot", "create", path(&dir), "s2"],
        vec!["status", path(&dir)],
        vec!["compact", path(&dir)],
    ] {
        let out = run_lsvblk(&args);
        assert_refused(
            &args.join(" "),
            &out,
            DATA,
            &["ephemeral", "nothing else can read it"],
        );
    }
    let mut serve = Daemon::spawn(&dir, &kms, &token, &[]);
    let status = serve.wait_exit(std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(DATA), "{}", serve.stderr());
    assert!(serve.stderr().contains("ephemeral"), "{}", serve.stderr());

    // The next ephemeral daemon on the directory deletes the leftover: a
    // new, empty disk under a new key.
    let mut daemon = Daemon::start_ephemeral(&kms, &dir, "8M");
    assert!(
        daemon
            .stderr()
            .contains("deleted an ephemeral volume a killed daemon left")
    );
    {
        let mut client = daemon.client(1);
        Disk::zeros(8 * MIB).check(&mut client, "a new ephemeral disk");
    }
    // A clean stop deletes the directory.
    daemon.stop_cleanly();
    assert!(!dir.exists(), "deleted at exit");
}

#[test]
fn serve_ephemeral_refuses_to_delete_a_real_volume() {
    let kms = Kms::start();
    let volume = kit::daemon::create_volume(&kms, 4 * MIB, &["alice"], 4096);
    let out = run_lsvblk(&[
        "serve",
        "--ephemeral",
        "--size",
        "4M",
        "--volume",
        path(&volume),
        "--socket",
        path(&kms.fresh_path("vhost", "sock")),
    ]);
    assert_refused("--ephemeral over a volume", &out, 64, &["already exists"]);
    assert!(
        volume.join("volume.json").exists(),
        "the volume is untouched"
    );
}

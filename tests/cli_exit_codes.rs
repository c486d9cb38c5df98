//! The exit codes of README.md "Exit codes", one test per row where the
//! row can be reached cheaply (69 and 77 are tested with a real lsvkms in
//! `daemon_blkio/refusals.rs`, 75 in `daemon_snapshot`): usage errors of
//! both binaries, and the data errors (65) of a volume whose files are
//! damaged, truncated, missing or another volume's.

mod kit;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use kit::cli::{LSVBLK, assert_refused, run_lsvblk};
use kit::daemon::{Daemon, create_volume};
use kit::kms::{Kms, LSVKMS};
use lsvblk::store::{CompactOptions, list_checkpoints, read_checkpoint, referenced_segments};
use lsvblk::volume::{Superblock, Volume};

const MIB: u64 = 1 << 20;
const USAGE: i32 = 64;
const DATA: i32 = 65;

fn run(program: &str, args: &[&str]) -> Output {
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_64_from_both_binaries_and_help_exits_0() {
    for (program, args) in [
        (LSVBLK, &["--no-such-option"][..]),
        (LSVBLK, &["inspect"]),
        (
            LSVBLK,
            &["serve", "--volume", "v", "--socket", "s", "--kms", ""],
        ),
        (LSVBLK, &["no-such-command"]),
        (LSVKMS, &["--no-such-option"]),
        (LSVKMS, &["token", "issue"]),
        (LSVKMS, &["init", "--dir", "/nonexistent/x", "--kek", "tpm"]),
    ] {
        let out = run(program, args);
        assert_refused(&format!("{program} {args:?}"), &out, USAGE, &[]);
    }
    for program in [LSVBLK, LSVKMS] {
        for flag in ["--help", "--version"] {
            let out = run(program, &[flag]);
            assert!(out.status.success(), "{program} {flag}: {}", out.status);
        }
    }
}

/// A volume written in this process across several segments, some of them
/// compacted away, closed cleanly: every segment sealed and checkpointed.
fn written_volume(dir: &Path) -> PathBuf {
    let path = dir.join("v");
    let volume = kit::volume::create(&path, 4 * MIB, 4096);
    for pass in 0..4u8 {
        for chunk in 0..8u64 {
            volume
                .write(chunk * 128 * 1024, &[pass * 8 + chunk as u8; 128 * 1024])
                .unwrap();
        }
        volume.flush().unwrap();
    }
    let options = CompactOptions {
        live_ratio_max: 0.9,
        rate_bytes_per_s: None,
        stop: None,
        crash_after_steps: None,
    };
    volume.compact(&options, &mut |_| {}).unwrap();
    volume.close().unwrap();
    path
}

fn inspect(volume: &Path) -> Output {
    run_lsvblk(&["inspect", "--volume", volume.to_str().unwrap(), "--json"])
}

/// The segment files the newest checkpoint refers to, in id order.
fn referenced_segment_files(volume: &Path) -> Vec<PathBuf> {
    let superblock = Superblock::load(volume).unwrap();
    let newest = list_checkpoints(&volume.join("checkpoints")).unwrap()[0].clone();
    let data = read_checkpoint(&newest, &superblock.volume_id_bytes().unwrap()).unwrap();
    referenced_segments(&data)
        .into_iter()
        .map(|id| volume.join("segments").join(format!("{id:016x}.seg")))
        .collect()
}

#[test]
fn inspect_exits_0_on_a_whole_volume_and_65_on_a_damaged_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let volume = written_volume(dir.path());
    let clean = inspect(&volume);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(report["damage"]["findings"], serde_json::json!([]));
    assert!(report["damage"]["segments_checked"].as_u64().unwrap() >= 2);

    // One bit of ciphertext in the middle of a sealed segment: the CRC
    // catches it, no key needed.
    let segment = referenced_segment_files(&volume)[0].clone();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, middle).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], middle).unwrap();
    let damaged = inspect(&volume);
    let stderr = assert_refused("inspect, a flipped bit", &damaged, DATA, &["problem"]);
    let report: serde_json::Value = serde_json::from_slice(&damaged.stdout).unwrap();
    let finding = &report["damage"]["findings"][0];
    assert_eq!(finding["kind"], "checksum", "{report}\n{stderr}");
    assert_eq!(finding["path"], segment.to_str().unwrap());
}

#[test]
fn inspect_exits_65_on_a_truncated_sealed_segment_and_a_damaged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let volume = written_volume(dir.path());
    let segment = referenced_segment_files(&volume)[0].clone();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 100).unwrap();
    let out = inspect(&volume);
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert_refused("inspect, a truncated segment", &out, DATA, &[name]);

    let dir = tempfile::tempdir().unwrap();
    let volume = written_volume(dir.path());
    let checkpoint = list_checkpoints(&volume.join("checkpoints")).unwrap()[0].clone();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&checkpoint)
        .unwrap();
    file.write_all_at(&[0xff; 8], 40).unwrap();
    let out = inspect(&volume);
    let name = checkpoint.file_name().unwrap().to_str().unwrap();
    assert_refused("inspect, a damaged checkpoint", &out, DATA, &[name]);
}

/// A segment the newest checkpoint refers to, deleted: opening the volume
/// and inspecting it name that segment (not the first missing id of a
/// replay from scratch) and inspect exits 65.
#[test]
fn a_missing_segment_is_named_and_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let volume = written_volume(dir.path());
    let first_left = kit::volume::segment_files(&volume)[0].clone();
    let referenced = referenced_segment_files(&volume);
    let gone = referenced.last().unwrap().clone();
    assert_ne!(gone, first_left, "the test needs a segment after the first");
    std::fs::remove_file(&gone).unwrap();
    let id = gone.file_stem().unwrap().to_str().unwrap().to_string();

    let error = match Volume::open(&volume, kit::volume::key(1), &kit::volume::options(4096)) {
        Ok(_) => panic!("a volume without segment {id} opened"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&id), "the error names {id}: {error}");
    let out = inspect(&volume);
    assert_refused("inspect, a missing segment", &out, DATA, &[&id]);
}

/// `volume_id` in volume.json changed by hand: the files are not the volume
/// the key was sealed for. serve and inspect both exit 65 (before, serve
/// asked lsvkms, which refused: 77), and serve does not ask lsvkms at all.
#[test]
fn a_changed_volume_id_exits_65_from_serve_and_inspect() {
    let kms = Kms::start();
    let volume = create_volume(&kms, MIB, &["alice"], 4096);
    let token = kms.token("alice");
    let mut daemon = Daemon::start(&volume, &kms, &token, &[]);
    let mut client = daemon.client(1);
    client.write(0, 0, &[5; 4096]).unwrap();
    client.flush(0).unwrap();
    drop(client);
    assert!(daemon.sigterm_and_wait().success());

    let superblock_path = volume.join("volume.json");
    let text = std::fs::read_to_string(&superblock_path).unwrap();
    let old_id = Superblock::load(&volume).unwrap().volume_id;
    let new_id: String = old_id.chars().rev().collect();
    assert_ne!(old_id, new_id);
    std::fs::write(&superblock_path, text.replace(&old_id, &new_id)).unwrap();

    let out = inspect(&volume);
    assert_refused("inspect", &out, DATA, &["another volume"]);
    let unwraps_before = audited_unwraps(&kms);
    let mut daemon = Daemon::spawn(&volume, &kms, &token, &["--kms-timeout", "1s"]);
    let status = daemon.wait_exit(std::time::Duration::from_secs(30));
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(DATA), "serve: {status}\n{stderr}");
    assert!(stderr.contains("another volume"), "{stderr}");
    assert_eq!(audited_unwraps(&kms), unwraps_before, "serve asked lsvkms");
}

fn audited_unwraps(kms: &Kms) -> usize {
    std::fs::read_to_string(kms.audit_path())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("\"unwrap\""))
        .count()
}

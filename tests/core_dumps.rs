//! No key in a core dump, in memory or in a register.
//!
//! A core file holds what `/proc/PID/mem` scans cannot see: the registers
//! of every thread (`NT_PRSTATUS`, and the SSE/AVX/AVX-512 state in
//! `NT_PRFPREG` and `NT_X86_XSTATE`), where AES code leaves round keys and
//! a `memcpy` leaves key bytes. These tests make `lsvkms serve` and
//! `lsvblk serve` dump core after real work (with the test-only
//! `--allow-core-dumps`, a raised `RLIMIT_CORE` in the child, SIGABRT),
//! then look in every memory segment and every register note for each key
//! they handled: the wrapping key, every data key (raw, and each 16-byte
//! round key of the AES-256 expansion of each half, for encryption and for
//! AES-NI's decryption), and a key a rotation destroyed. Without the flag,
//! no core may be written at all.
//!
//! The cores go to a directory of each process's own (its working
//! directory): with a plain `core_pattern` such as `core` that is where the
//! kernel writes them. A `core_pattern` that pipes to a program makes the
//! tests skip (they say so); nothing machine-wide is changed. Each test
//! takes a few seconds.

mod kit;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use lsvblk::kms::api::KeyContext;
use serde_json::Value;

use kit::aes_schedule::{aes256_round_keys, check_against_fips_197};
use kit::cli::lsvblk_json;
use kit::core::{Core, NT_PRFPREG, NT_PRSTATUS, NT_X86_XSTATE, cores_unavailable, find_core};
use kit::daemon::{Daemon, ServeOptions, create_volume_with};
use kit::data::BLOCK;
use kit::kms::Kms;

/// How long the kernel may take to write a core.
const CORE_WAIT: Duration = Duration::from_secs(30);
/// How long to make sure that no core comes.
const NO_CORE_WAIT: Duration = Duration::from_secs(2);
const MIB: u64 = 1 << 20;

/// Whether the tests can run here; prints why not.
fn cores_possible() -> bool {
    match cores_unavailable() {
        Some(why) => {
            eprintln!("SKIPPED: no core dumps can be had here: {why}");
            false
        }
        None => true,
    }
}

/// A named key and every 16-byte value of it a core must not hold: each
/// AES-256 round key (encryption and decryption schedules) of each 32-byte
/// half. The first two round keys are the half itself, so the raw key is
/// covered.
struct Secret {
    name: String,
    needles: Vec<[u8; 16]>,
}

impl Secret {
    fn new(name: &str, key: &[u8]) -> Self {
        assert!(
            key.len() == 32 || key.len() == 64,
            "{name}: {} bytes",
            key.len()
        );
        let needles = key
            .chunks_exact(32)
            .flat_map(|half| aes256_round_keys(half.try_into().unwrap()))
            .collect();
        Secret {
            name: name.to_owned(),
            needles,
        }
    }
}

/// Reads the core in `dir` and checks it holds none of `secrets`, in
/// memory or in any thread's registers.
fn assert_core_holds_no_key(dir: &Path, what: &str, secrets: &[Secret]) {
    let path = find_core(dir, CORE_WAIT)
        .unwrap_or_else(|| panic!("{what}: no core in {} after SIGABRT", dir.display()));
    let core = Core::read(&path);
    let threads = core.threads();
    assert!(
        threads.len() >= 2 && core.memory_bytes() > MIB as usize,
        "{what}: a core of {} threads and {} bytes is not a whole process",
        threads.len(),
        core.memory_bytes()
    );
    for kind in [NT_PRSTATUS, NT_PRFPREG, NT_X86_XSTATE] {
        let with = core.notes.iter().filter(|n| n.kind == kind).count();
        assert_eq!(
            with,
            threads.len(),
            "{what}: note {kind:#x} missing for some thread"
        );
    }
    let mut hits = Vec::new();
    for secret in secrets {
        for (index, needle) in secret.needles.iter().enumerate() {
            for place in core.find(needle) {
                hits.push(format!("{} round key {index}: {place}", secret.name));
            }
        }
    }
    eprintln!(
        "{what}: core of {} threads, {} MiB of memory, {} keys looked for",
        threads.len(),
        core.memory_bytes() >> 20,
        secrets.len()
    );
    assert!(
        hits.is_empty(),
        "{what}: the core holds key material:\n{}",
        hits.join("\n")
    );
}

/// The wrapping key of a fresh lsvkms state directory (version 1).
fn wrapping_key(kms: &Kms) -> Secret {
    let key = fs::read(kms.state_dir().join("kek").join("v000001.key")).unwrap();
    Secret::new("wrapping key v1", &key)
}

#[test]
fn a_core_of_lsvkms_after_datakey_unwrap_and_rewrap_holds_no_key() {
    if !cores_possible() {
        return;
    }
    check_against_fips_197();
    let mut kms = Kms::init(&[], Vec::new());
    let core_dir = kms.dir().join("lsvkms-core");
    kms.set_core(core_dir.clone(), true);
    kms.serve();
    let client = kms.client();
    let token = kms.token_text("dave", "10m");
    let mut secrets = vec![wrapping_key(&kms)];
    for index in 0..4 {
        let context = KeyContext {
            volume_id: format!("vol-{index}"),
            snapshot_id: String::new(),
        };
        let made = client
            .generate_data_key(&["dave".to_owned()], &context)
            .unwrap();
        let key = client.unwrap(&made.wrapped_blob, &context, &token).unwrap();
        assert_eq!(key.id(), made.key.id());
        let rewrapped = client.rewrap(&made.wrapped_blob).unwrap();
        client
            .unwrap(&rewrapped.wrapped_blob.0, &context, &token)
            .unwrap();
        secrets.push(Secret::new(
            &format!("data key {index}"),
            made.key.expose_secret(),
        ));
    }
    let status = kms.signal_and_wait(libc::SIGABRT);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    assert_core_holds_no_key(&core_dir, "lsvkms", &secrets);
}

/// The current data key of the volume, unwrapped as the daemon does it
/// (alice is on its ACL).
fn current_data_key(kms: &Kms, volume: &Path, alice: &Path) -> (String, Vec<u8>) {
    let superblock: Value =
        serde_json::from_slice(&fs::read(volume.join("volume.json")).unwrap()).unwrap();
    let status = lsvblk_json(&["status", volume.to_str().unwrap(), "--json"]);
    let current = status["keys"]["current_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = superblock["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == current.as_str())
        .unwrap_or_else(|| panic!("no blob of {current} in {superblock}"));
    let blob = base64::engine::general_purpose::STANDARD
        .decode(entry["wrapped_blob"].as_str().unwrap())
        .unwrap();
    let context = KeyContext {
        volume_id: superblock["volume_id"].as_str().unwrap().to_owned(),
        snapshot_id: String::new(),
    };
    let token = fs::read_to_string(alice).unwrap();
    let key = kms.client().unwrap(&blob, &context, token.trim()).unwrap();
    (current, key.expose_secret().to_vec())
}

/// Writes `bytes` of recognisable data from offset 0 through `client` and
/// reads it back.
fn write_and_read(client: &mut kit::blkio::BlkClient, bytes: u64, fill: u8) {
    let chunk = vec![fill; MIB as usize];
    for offset in (0..bytes).step_by(MIB as usize) {
        client.write(0, offset, &chunk).unwrap();
    }
    client.flush(0).unwrap();
    for offset in (0..bytes).step_by(MIB as usize) {
        assert!(client.read(0, offset, MIB as usize).unwrap() == chunk);
    }
}

#[test]
fn a_core_of_lsvblk_serve_after_io_and_a_rotation_holds_no_key() {
    if !cores_possible() {
        return;
    }
    let kms = Kms::start();
    let alice = kms.token("alice");
    let args = ["--segment-size", "1M"];
    let volume = create_volume_with(&kms, 16 * MIB, &["alice"], BLOCK as u32, &args);
    let core_dir = kms.dir().join("lsvblk-core");
    let mut options = ServeOptions::args(&["--compact-rate-mib", "0"]);
    options.core = Some((core_dir.clone(), true));
    let daemon = Daemon::start_with(&volume, &kms, &alice, &options);
    let mut client = daemon.client(1);
    write_and_read(&mut client, 4 * MIB, 0x5a);
    let (old_id, old_key) = current_data_key(&kms, &volume, &alice);

    // Rotation through the daemon: the old key's blocks re-encrypted under
    // a new key, then the old key destroyed in lsvkms.
    let rotated = lsvblk_json(&["rotate", volume.to_str().unwrap(), "--json"]);
    let (new_id, new_key) = current_data_key(&kms, &volume, &alice);
    assert_ne!(old_id, new_id, "{rotated}");
    write_and_read(&mut client, 4 * MIB, 0xa5);

    let secrets = [
        Secret::new("destroyed data key", &old_key),
        Secret::new("current data key", &new_key),
        wrapping_key(&kms),
    ];
    let status = daemon.into_process().signal_and_wait(libc::SIGABRT);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    assert_core_holds_no_key(&core_dir, "lsvblk serve", &secrets);
}

#[test]
fn without_the_flag_neither_process_writes_a_core_whatever_the_limit() {
    if !cores_possible() {
        return;
    }
    let mut kms = Kms::init(&[], Vec::new());
    let kms_core_dir = kms.dir().join("lsvkms-core");
    kms.set_core(kms_core_dir.clone(), false);
    kms.serve();
    let alice = kms.token("alice");
    let volume = create_volume_with(&kms, 4 * MIB, &["alice"], BLOCK as u32, &[]);
    let daemon_core_dir = kms.dir().join("lsvblk-core");
    let mut options = ServeOptions::args(&[]);
    options.core = Some((daemon_core_dir.clone(), false));
    let daemon = Daemon::start_with(&volume, &kms, &alice, &options);
    let mut client = daemon.client(1);
    write_and_read(&mut client, MIB, 0x3c);

    let pid = daemon.pid();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core_limit = limits.lines().find(|l| l.starts_with("Max core file size"));
    assert!(
        core_limit.is_some_and(|l| l.split_whitespace().nth(4) == Some("0")),
        "lsvblk serve keeps a core limit: {core_limit:?}"
    );
    let status = daemon.into_process().signal_and_wait(libc::SIGABRT);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    assert!(!status.core_dumped(), "lsvblk serve dumped core");
    let status = kms.signal_and_wait(libc::SIGABRT);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    assert!(!status.core_dumped(), "lsvkms dumped core");
    for dir in [&kms_core_dir, &daemon_core_dir] {
        assert_eq!(
            find_core(dir, NO_CORE_WAIT),
            None,
            "a core in {}",
            dir.display()
        );
    }
}

//! Issue 6 acceptance, end to end: the online key lifecycle of a served
//! volume, with a real `lsvkms`, real `lsvblk serve` daemons, the `lsvblk`
//! command line and libblkio as the VMM (see `common::procs`). Every check
//! of data compares the bytes a daemon returns with a model of the disk.
//!
//! - Rotation under load: `lsvblk rotate` re-encrypts 32 MiB (at 16 MiB/s)
//!   while a client writes and reads random 4–64 KiB ranges, every read
//!   checked: no I/O error, no mismatch. Afterwards `status` shows the new
//!   key, lsvkms has destroyed the old one (its blob unwraps no more), no
//!   record header in any segment file names it, and the daemon's memory
//!   (every readable mapping, read through /proc/PID/mem) holds no 16
//!   bytes of it (not the key, its halves, nor an AES round key made of
//!   it) and not its base64. The new key is found, and only in locked
//!   (mlock) pages.
//! - Thresholds: with small limits set by `lsvblk policy` (live bytes, then
//!   bytes ever encrypted) and a moved clock (`serve --clock-skew-file`:
//!   +91 days, then the key 121 days old with rotation by age off), the
//!   daemon rotates by itself and `status` names the reason each time; no
//!   key it rotated away from is left in its memory.
//! - Compromise: with lsvkms stopped (the daemon serves on and reports it),
//!   an allowed unwrap by a user not on the ACL is appended to its audit
//!   log; `lsvkms audit check` marks the key compromised; lsvkms restarts;
//!   the same daemon rotates within seconds and lsvkms destroys the key.
//! - kill -9 at 20 random points of a rotation (half of them within 80 ms
//!   of a daemon's start), each daemon restarted and resuming it by
//!   itself: it completes, every byte matches, no record under the old key
//!   remains.
//! - A rotation that ends while lsvkms is down owes it the old key's
//!   destruction; a daemon killed then still pays after its restart.
//! - A snapshot keeps the old key (in lsvkms too) until it is deleted, while
//!   the volume's own blocks are all re-encrypted.
//! - Wrapping-key rotation in lsvkms: the daemon rewraps its volume's and
//!   snapshot's blobs by itself; `lsvblk rewrap` does it for a volume no
//!   daemon serves; the new blobs open all of them once lsvkms refuses the
//!   old wrapping key.
//!
//! Random choices come from a seed printed at the start of each test; set
//! `LSVBLK_TEST_SEED` to replay one.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::blkio_client::BlkClient;
use common::procs::{Daemon, Kms, LSVBLK, create_volume_with, run_lsvblk};
use lsvblk::crypto::KeyId;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::audit::log::{AuditLog, open_file_sink};
use lsvblk::kms::audit::{AuditEntry, AuditKey, Decision};
use lsvblk::kms::client::ClientError;
use lsvblk::kms::config::files;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const DAY_S: i64 = 24 * 3600;
/// Largest request the device takes.
const REQUEST_BYTES_MAX: u64 = 4 * MIB;
/// How long a client keeps retrying to connect to a started daemon.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the daemon may take to act on its own: it looks at its keys
/// every 2 s, and a rotation of a few MiB takes well under a second.
const ACT_WAIT: Duration = Duration::from_secs(15);

// --- Randomness, data and the model of a disk ----------------------------------

/// SplitMix64: small, seedable, good enough to pick offsets and delays.
struct Rng(u64);

impl Rng {
    /// Seeded from `LSVBLK_TEST_SEED` or the clock; prints the seed.
    fn new(test: &str) -> Self {
        let seed = std::env::var("LSVBLK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: LSVBLK_TEST_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Recognisable data: every 4 KiB block starts with `"<tag> @<offset>"` and
/// goes on with bytes that depend on both, so a block read in the wrong
/// place, or from the wrong write, names where it came from.
fn fill(tag: &str, offset: u64, len: u64) -> Vec<u8> {
    assert!(offset.is_multiple_of(BLOCK) && len.is_multiple_of(BLOCK));
    let mut out = Vec::with_capacity(len as usize);
    for block in (offset..offset + len).step_by(BLOCK as usize) {
        let label = format!("{tag} @{block}\n");
        let mut state = block
            ^ tag
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        out.extend_from_slice(label.as_bytes());
        while out.len() % BLOCK as usize != 0 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            out.push((state >> 56) as u8);
        }
    }
    out
}

/// The label `fill` put at the start of a block, for failure messages.
fn label(block: &[u8]) -> String {
    if block.iter().all(|b| *b == 0) {
        return "zeros".to_string();
    }
    let end = block.iter().position(|b| *b == b'\n').unwrap_or(0).min(64);
    String::from_utf8_lossy(&block[..end]).into_owned()
}

/// Where `got` first differs from `want` (which starts at byte `offset` of
/// the disk), naming the block's label and the expected one.
fn difference(got: &[u8], want: &[u8], offset: u64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} bytes, want {}", got.len(), want.len()));
    }
    let at = got.iter().zip(want).position(|(g, w)| g != w)?;
    let start = at / BLOCK as usize * BLOCK as usize;
    let end = (start + BLOCK as usize).min(got.len());
    Some(format!(
        "first difference at byte {}: the block holds {:?}, want {:?}",
        offset + at as u64,
        label(&got[start..end]),
        label(&want[start..end]),
    ))
}

/// What every byte of a disk must read as.
#[derive(Clone)]
struct Disk {
    bytes: Vec<u8>,
}

impl Disk {
    fn zeros(size: u64) -> Self {
        Self {
            bytes: vec![0; size as usize],
        }
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn put(&mut self, offset: u64, data: &[u8]) {
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    fn range(&self, offset: u64, len: u64) -> &[u8] {
        &self.bytes[offset as usize..(offset + len) as usize]
    }

    /// Writes `fill(tag, ..)` over `offset..offset + len` through queue 0
    /// (1 MiB requests) and into the model.
    fn write(&mut self, client: &mut BlkClient, tag: &str, offset: u64, len: u64) {
        let data = fill(tag, offset, len);
        for (n, piece) in data.chunks(MIB as usize).enumerate() {
            let at = offset + n as u64 * MIB;
            client
                .write(0, at, piece)
                .unwrap_or_else(|e| panic!("write of {tag} at {at}: {e:?}"));
        }
        self.put(offset, &data);
    }

    /// Reads the whole disk through `client` and compares.
    fn check(&self, client: &mut BlkClient, context: &str) {
        let mut got = Vec::with_capacity(self.bytes.len());
        for at in (0..self.size()).step_by(REQUEST_BYTES_MAX as usize) {
            let piece = (self.size() - at).min(REQUEST_BYTES_MAX);
            let read = client
                .read(0, at, piece as usize)
                .unwrap_or_else(|e| panic!("{context}: read at {at}: {e:?}"));
            got.extend(read);
        }
        if let Some(diff) = difference(&got, &self.bytes, 0) {
            panic!("{context}: {diff}");
        }
    }
}

// --- Processes, the command line, the volume's files --------------------------------

/// A KMS, alice's token, and her volume.
struct Setup {
    kms: Kms,
    alice: PathBuf,
    volume: PathBuf,
    size: u64,
}

impl Setup {
    /// A `size` volume of 1 MiB segments, ACL alice, made by `lsvblk create`
    /// with `create_args`.
    fn new(size: u64, create_args: &[&str]) -> Self {
        let kms = Kms::start();
        let mut args = vec!["--segment-size", "1M"];
        args.extend_from_slice(create_args);
        let volume = create_volume_with(&kms, size, &["alice"], BLOCK as u32, &args);
        Self {
            alice: kms.token("alice"),
            kms,
            volume,
            size,
        }
    }

    fn vol(&self) -> &str {
        path(&self.volume)
    }

    fn serve(&self, args: &[&str]) -> Daemon {
        Daemon::start(&self.volume, &self.kms, &self.alice, args)
    }

    fn status(&self) -> Value {
        lsvblk_json(&["status", self.vol(), "--json"])
    }

    /// alice's token, as lsvkms takes it.
    fn alice_token(&self) -> String {
        fs::read_to_string(&self.alice).unwrap().trim().to_owned()
    }

    /// The volume's data key `key_id`, unwrapped from its blob in
    /// volume.json with alice's token as a daemon does: its 64 bytes.
    fn data_key(&self, key_id: &str) -> Vec<u8> {
        let superblock = superblock(&self.volume);
        let (_, blob) = blobs(&superblock)
            .into_iter()
            .find(|(id, _)| id == key_id)
            .unwrap_or_else(|| panic!("no key {key_id} in volume.json"));
        let key = self
            .kms
            .client()
            .unwrap(&blob, &self.context(), &self.alice_token())
            .unwrap();
        assert_eq!(key.id().to_string(), key_id);
        key.expose_secret().to_vec()
    }

    /// [`Setup::data_key`], or `None` if lsvkms no longer unwraps the key
    /// (a rotation destroyed it meanwhile).
    fn try_data_key(&self, key_id: &str) -> Option<Vec<u8>> {
        let (_, blob) = blobs(&superblock(&self.volume))
            .into_iter()
            .find(|(id, _)| id == key_id)?;
        let key = self
            .kms
            .client()
            .unwrap(&blob, &self.context(), &self.alice_token())
            .ok()?;
        Some(key.expose_secret().to_vec())
    }

    /// The context the volume's keys are sealed for.
    fn context(&self) -> KeyContext {
        KeyContext {
            volume_id: superblock(&self.volume)["volume_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            snapshot_id: String::new(),
        }
    }

    /// lsvkms's word on a key: `enabled`, `compromised`, `destroyed`...
    fn key_status(&self, key_id: &str) -> String {
        let info = self.kms.client().key_info(key_id.parse().unwrap()).unwrap();
        info.status
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn connect(daemon: &Daemon) -> BlkClient {
    BlkClient::connect(&daemon.socket, 1, CONNECT_WAIT)
        .unwrap_or_else(|e| panic!("connect: {e}\ndaemon stderr:\n{}", daemon.stderr()))
}

fn stop_cleanly(daemon: &mut Daemon) {
    let status = daemon.sigterm_and_wait();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", daemon.stderr());
}

/// `lsvblk ARGS`, which must succeed; its stdout as JSON (ARGS ask for it).
fn lsvblk_json(args: &[&str]) -> Value {
    json_of(args, &run_lsvblk(args))
}

fn json_of(args: &[&str], output: &Output) -> Value {
    assert!(
        output.status.success(),
        "lsvblk {args:?}: {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "lsvblk {args:?}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Polls `check` every 50 ms until it gives a value; panics after `wait`
/// with `what` and the last thing `describe` says.
fn wait_for<T>(
    what: &str,
    wait: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {wait:?}; {}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `volume.json`.
fn superblock(volume: &Path) -> Value {
    serde_json::from_slice(&fs::read(volume.join("volume.json")).unwrap()).unwrap()
}

/// Every (key id, wrapped blob) of a superblock or snapshot metadata block.
fn blobs(meta: &Value) -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    meta["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let blob = b64.decode(k["wrapped_blob"].as_str().unwrap()).unwrap();
            (k["key_id"].as_str().unwrap().to_owned(), blob)
        })
        .collect()
}

/// The wrapping-key version of every blob of the volume and its snapshots,
/// by file (`volume.json`, `snapshots/NAME.json`) and key id.
fn blob_versions(volume: &Path) -> BTreeMap<String, u32> {
    let mut files = vec![("volume.json".to_owned(), superblock(volume))];
    if let Ok(entries) = fs::read_dir(volume.join("snapshots")) {
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let meta = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
                let name = format!("snapshots/{}", path.file_name().unwrap().to_str().unwrap());
                files.push((name, meta));
            }
        }
    }
    let mut versions = BTreeMap::new();
    for (file, meta) in files {
        for (key_id, blob) in blobs(&meta) {
            let version = lsvblk::kms::seal::parse(&blob).unwrap().kek_version;
            versions.insert(format!("{file} {key_id}"), version);
        }
    }
    versions
}

/// The key ids of `status`'s `keys.keys`.
fn status_key_ids(status: &Value) -> Vec<String> {
    status["keys"]["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {status}"))
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect()
}

fn current_key(status: &Value) -> String {
    status["keys"]["current_key_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no current key in {status}"))
        .to_owned()
}

/// The HTTP status of a refused lsvkms call.
fn refused<T>(result: Result<T, ClientError>) -> u16 {
    match result {
        Ok(_) => panic!("lsvkms did not refuse"),
        Err(ClientError::Api { status, .. }) => status,
        Err(other) => panic!("not a refusal: {other}"),
    }
}

/// An `lsvblk` command running in the background; killed and reaped if
/// the test ends first.
struct Background(Option<Child>);

impl Background {
    fn start(args: &[&str]) -> Self {
        let child = Command::new(LSVBLK)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self(Some(child))
    }

    fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// --- Segment files ----------------------------------------------------------------

/// Records found in the segment files, per key id (hex; all zeros for
/// records without payload): (records, data blocks).
type RecordsByKey = BTreeMap<String, (u64, u64)>;

/// Walks every segment file's records (layout in src/store/mod.rs: a
/// 64-byte segment header `LSVS`, then 64-byte record headers `LSVR`, each
/// data record followed by its checksum table and blocks) and counts them
/// by key id. A walk stops at the first bytes that are not a record header:
/// the end of the file, or the unwritten tail of a log head.
fn records_by_key(volume: &Path) -> RecordsByKey {
    let mut found = RecordsByKey::new();
    for file in common::segment_files(volume) {
        let bytes = fs::read(&file).unwrap();
        assert!(
            bytes.len() >= 64 && &bytes[..4] == b"LSVS",
            "{} has no segment header",
            file.display()
        );
        let mut at = 64;
        while at + 64 <= bytes.len() && &bytes[at..at + 4] == b"LSVR" {
            let header = &bytes[at..at + 64];
            let kind = header[6];
            let blocks = u64::from(u32::from_le_bytes(header[24..28].try_into().unwrap()));
            let block_bytes = 1u64 << header[28];
            let key = hex::encode(&header[32..48]);
            let entry = found.entry(key).or_default();
            entry.0 += 1;
            let length = if kind == 1 {
                entry.1 += blocks;
                64 + 4 * blocks + blocks * block_bytes
            } else {
                64
            };
            at += length as usize;
        }
    }
    found
}

// --- A process's memory -------------------------------------------------------------

/// Each thread of process `pid`: its name and stack pointer (from
/// /proc/PID/task/TID/syscall, which ends with the stack and instruction
/// pointers of a thread blocked in a system call), to tell which thread's
/// stack a mapping is.
fn thread_stack_pointers(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = fs::read_to_string(task.join("comm")).unwrap_or_default();
        let syscall = fs::read_to_string(task.join("syscall")).unwrap_or_default();
        let fields: Vec<&str> = syscall.split_whitespace().collect();
        if fields.len() >= 3
            && let Ok(sp) =
                u64::from_str_radix(fields[fields.len() - 2].trim_start_matches("0x"), 16)
        {
            threads.push((name.trim().to_owned(), sp));
        }
    }
    threads
}

/// Where in the memory of process `pid` any of `needles` occurs: every
/// readable mapping of /proc/PID/maps, read through /proc/PID/mem (the
/// daemon is our child, so we may). Returns "needle N at ADDR in MAPPING",
/// with the threads whose stack the mapping is.
fn memory_holds(pid: u32, needles: &[&[u8]]) -> Vec<String> {
    let threads = thread_stack_pointers(pid);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let longest = needles.iter().map(|n| n.len()).max().unwrap();
    let mut found = Vec::new();
    let mut bytes_read = 0u64;
    const CHUNK: u64 = 4 * MIB;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, perms) = (fields[0], fields[1]);
        let name = fields.get(5).copied().unwrap_or("[anonymous]");
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut at = start;
        while at < end {
            // Chunks overlap by a needle's length, so none is missed at a seam.
            let len = (end - at).min(CHUNK + longest as u64);
            let mut buf = vec![0u8; len as usize];
            // Some mappings (device memory, guard pages) cannot be read.
            let Ok(read) = mem.read_at(&mut buf, at) else {
                break;
            };
            buf.truncate(read);
            bytes_read += read as u64;
            for (n, needle) in needles.iter().enumerate() {
                let mut from = 0;
                while let Some(pos) = buf[from..].windows(needle.len()).position(|w| w == *needle) {
                    let addr = at + (from + pos) as u64;
                    let stack_of: Vec<String> = threads
                        .iter()
                        .filter(|(_, sp)| (start..end).contains(sp))
                        .map(|(name, sp)| format!("{name} (sp {sp:#x})"))
                        .collect();
                    found.push(format!(
                        "needle {n} at {addr:#x} in {line} (stack of {stack_of:?})"
                    ));
                    from += pos + 1;
                }
            }
            if read == 0 {
                break;
            }
            at += CHUNK;
        }
    }
    assert!(bytes_read > MIB, "read only {bytes_read} bytes of {pid}");
    found.sort();
    found.dedup();
    found
}

/// The address ranges (`START-END` as /proc/PID/maps writes them) of the
/// mappings of `pid` that are locked in memory whole (mlock: where keys go).
fn locked_mappings(pid: u32) -> Vec<String> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut locked = Vec::new();
    let (mut range, mut size_kb) = (String::new(), 0u64);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            Some(&"Size:") => size_kb = fields[1].parse().unwrap(),
            Some(&"Locked:") if size_kb > 0 && fields[1] == size_kb.to_string() => {
                locked.push(format!("{range} "));
            }
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                range = (*first).to_owned();
                size_kb = 0;
            }
            _ => {}
        }
    }
    locked
}

/// The key in the forms lsvkms's JSON carries it: base64 of the whole key,
/// and of its first 48 bytes (what is left if a later, shorter answer in
/// the same buffer overwrote the end).
fn key_in_base64(key: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        b64.encode(key).into_bytes(),
        b64.encode(&key[..48]).into_bytes(),
    ]
}

/// What [`memory_holds`] looks for of a key: each 16-byte quarter. The
/// whole key and each 32-byte half are quarters side by side, so this finds
/// them too; and a quarter alone is an AES round key as a schedule holds
/// it (AES-256's first two round keys are its key's halves of a half).
fn key_needles(key: &[u8]) -> Vec<&[u8]> {
    assert_eq!(key.len(), 64);
    key.chunks(16).collect()
}

// --- 1. Rotation under a verified load -----------------------------------------------

/// Counts of the load's I/O.
#[derive(Default)]
struct LoadStats {
    ops: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
}

/// Random 4–64 KiB writes and reads over `disk` through `client` until
/// `stop`, every read compared with the model; returns the client, the
/// model and the first problems seen.
fn run_load(
    mut client: BlkClient,
    mut disk: Disk,
    mut rng: Rng,
    stats: &LoadStats,
    stop: &AtomicBool,
) -> (BlkClient, Disk, Vec<String>) {
    let mut problems = Vec::new();
    let blocks = disk.size() / BLOCK;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let len = rng.between(1, 16) * BLOCK;
        let offset = rng.between(0, blocks - len / BLOCK) * BLOCK;
        if rng.next().is_multiple_of(2) {
            let data = fill(&format!("load {n}"), offset, len);
            match client.write(0, offset, &data) {
                Ok(()) => disk.put(offset, &data),
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::SeqCst);
                    problems.push(format!("write {n} at {offset}: {e:?}"));
                }
            }
        } else {
            match client.read(0, offset, len as usize) {
                Ok(got) => {
                    if let Some(diff) = difference(&got, disk.range(offset, len), offset) {
                        stats.mismatches.fetch_add(1, Ordering::SeqCst);
                        problems.push(format!("read {n} at {offset}: {diff}"));
                    }
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::SeqCst);
                    problems.push(format!("read {n} at {offset}: {e:?}"));
                }
            }
        }
        stats.ops.fetch_add(1, Ordering::SeqCst);
        n += 1;
        problems.truncate(10);
    }
    (client, disk, problems)
}

/// Live data before the rotation (the benchmark rotates 256 MiB and more).
const LOAD_DATA_BYTES: u64 = 32 * MIB;

#[test]
fn a_rotation_under_verified_io_loses_nothing_and_leaves_no_trace_of_the_old_key() {
    let setup = Setup::new(LOAD_DATA_BYTES + 8 * MIB, &[]);
    let mut rng = Rng::new("rotation under load");
    // No background compaction: what segments hold is the rotation's doing.
    let daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "base", 0, LOAD_DATA_BYTES);
    client.flush(0).unwrap();

    let before = setup.status();
    let old_key = current_key(&before);
    assert_eq!(status_key_ids(&before), [old_key.as_str()], "{before}");
    let old_material = setup.data_key(&old_key);
    let (_, old_blob) = blobs(&superblock(&setup.volume))
        .into_iter()
        .find(|(id, _)| *id == old_key)
        .unwrap();
    let needles = key_needles(&old_material);
    // The checks below can fail: the daemon holds the key now, and the
    // segment files are full of records under it.
    let held = memory_holds(daemon.pid(), &needles);
    assert!(
        (0..needles.len()).all(|n| held.iter().any(|h| h.starts_with(&format!("needle {n} ")))),
        "the memory scan does not find the key the daemon uses: {held:?}"
    );
    let records = records_by_key(&setup.volume);
    assert!(
        records[&old_key].1 >= LOAD_DATA_BYTES / BLOCK,
        "the segment scan misses records: {records:?}"
    );

    // The load runs before, during and after the rotation.
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
        let load_rng = Rng(rng.next());
        move || run_load(client, disk, load_rng, &stats, &stop)
    });
    std::thread::sleep(Duration::from_millis(200));
    let ops_before = stats.ops.load(Ordering::SeqCst);
    let started = Instant::now();
    // 16 MiB/s: the 32 MiB take about 2 s, under load all along.
    let args = ["rotate", setup.vol(), "--rate-mib", "16", "--json"];
    let rotated = lsvblk_json(&args);
    let took = started.elapsed();
    let ops_during = stats.ops.load(Ordering::SeqCst) - ops_before;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (mut client, disk, problems) = load.join().unwrap();
    eprintln!(
        "rotation of {} MiB under load: {took:?}, {ops_during} I/Os during it, {} in all: {rotated}",
        LOAD_DATA_BYTES >> 20,
        stats.ops.load(Ordering::SeqCst)
    );
    assert_eq!(
        (
            stats.errors.load(Ordering::SeqCst),
            stats.mismatches.load(Ordering::SeqCst)
        ),
        (0, 0),
        "I/O errors and mismatches under rotation: {problems:?}"
    );
    assert!(
        ops_during >= 50,
        "only {ops_during} I/Os during the rotation"
    );

    // The answer, and what status says.
    let new_key = rotated["current_key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key, "{rotated}");
    assert_eq!(rotated["reason"], "manual", "{rotated}");
    let outcome = &rotated["outcome"];
    assert_eq!(
        outcome["forgotten"],
        serde_json::json!([old_key]),
        "{rotated}"
    );
    assert_eq!(
        outcome["destroyable"],
        serde_json::json!([old_key]),
        "{rotated}"
    );
    // Every byte under the old key at the switch (the load wrote some of
    // the last 8 MiB too), once; a second pass may take a write that was
    // in flight at the switch.
    let rekeyed = outcome["bytes_rekeyed"].as_u64().unwrap();
    assert!(
        (LOAD_DATA_BYTES / 2..=setup.size + MIB).contains(&rekeyed),
        "{rotated}"
    );
    let after = setup.status();
    assert_eq!(current_key(&after), new_key, "{after}");
    assert_eq!(status_key_ids(&after), [new_key.as_str()], "{after}");
    let keys = &after["keys"];
    assert!(keys["rotation"].is_null(), "{after}");
    assert_eq!(keys["rotations"], 1, "{after}");
    assert_eq!(keys["last_rotation"]["reason"], "manual", "{after}");
    assert_eq!(keys["pending_destroy"], serde_json::json!([]), "{after}");
    let usage = &keys["keys"][0]["usage"];
    assert!(
        usage["live_bytes"].as_u64().unwrap() >= LOAD_DATA_BYTES,
        "{after}"
    );
    assert_eq!(
        superblock(&setup.volume)["current_key_id"],
        new_key.as_str()
    );

    // lsvkms destroyed the old key: its blob opens nothing any more.
    assert_eq!(setup.key_status(&old_key), "destroyed");
    let token = setup.alice_token();
    let client_kms = setup.kms.client();
    assert_eq!(
        refused(client_kms.unwrap(&old_blob, &setup.context(), &token)),
        409
    );
    assert_eq!(setup.key_status(&new_key), "enabled");

    // No record under the old key in any segment file.
    let records = records_by_key(&setup.volume);
    assert!(!records.contains_key(&old_key), "{records:?}");
    assert!(
        records[&new_key].1 >= LOAD_DATA_BYTES / BLOCK,
        "{records:?}"
    );

    // Nor in the daemon's memory; the new key is there (the scan still
    // works), and only in locked pages (its material and schedule): not in
    // a dead stack frame, nor in a buffer of lsvkms's answer.
    let mut old_forms = key_in_base64(&old_material);
    old_forms.extend(needles.iter().map(|n| n.to_vec()));
    let old_forms: Vec<&[u8]> = old_forms.iter().map(Vec::as_slice).collect();
    let held = memory_holds(daemon.pid(), &old_forms);
    assert!(
        held.is_empty(),
        "the daemon still holds the old key after the rotation: {held:?}"
    );
    // (The new key came to the daemon in lsvkms's answer, in base64.)
    let new_material = setup.data_key(&new_key);
    let mut new_forms = key_in_base64(&new_material);
    new_forms.extend(key_needles(&new_material).iter().map(|n| n.to_vec()));
    let new_forms: Vec<&[u8]> = new_forms.iter().map(Vec::as_slice).collect();
    let held = memory_holds(daemon.pid(), &new_forms);
    assert!(!held.is_empty(), "the memory scan misses the new key");
    let locked = locked_mappings(daemon.pid());
    let unlocked: Vec<&String> = held
        .iter()
        .filter(|h| !locked.iter().any(|m| h.contains(m.as_str())))
        .collect();
    assert!(
        unlocked.is_empty(),
        "the new key is outside locked memory: {unlocked:?}"
    );

    disk.check(&mut client, "after the rotation");
    drop(client);
    let mut daemon = daemon;
    stop_cleanly(&mut daemon);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut connect(&daemon), "after the rotation and a restart");
    stop_cleanly(&mut daemon);
}

// --- 2. Thresholds, as the running daemon applies them -------------------------------

/// Waits until `status` says the last rotation was for `reason` and none
/// is in progress; returns that status.
fn wait_for_rotation(setup: &Setup, reason: &str) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    wait_for(
        &format!("a rotation for {reason}"),
        ACT_WAIT,
        || {
            let status = setup.status();
            let keys = &status["keys"];
            let done = keys["last_rotation"]["reason"] == reason && keys["rotation"].is_null();
            *last.borrow_mut() = status.clone();
            done.then_some(status)
        },
        || format!("status: {}", last.borrow()),
    )
}

/// Waits until no rotation is due, running or about to finish.
fn wait_until_settled(setup: &Setup) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    wait_for(
        "the keys to settle",
        ACT_WAIT,
        || {
            let status = setup.status();
            let keys = &status["keys"];
            let settled = keys["rotation"].is_null()
                && keys["rotation_due"].is_null()
                && keys["progress"].is_null();
            *last.borrow_mut() = status.clone();
            settled.then_some(status)
        },
        || format!("status: {}", last.borrow()),
    )
}

/// `lsvblk policy VOLUME ARGS --json` (through the daemon); the policy.
fn set_policy(setup: &Setup, args: &[&str]) -> Value {
    let mut all = vec!["policy", setup.vol()];
    all.extend_from_slice(args);
    all.push("--json");
    lsvblk_json(&all)["policy"].clone()
}

/// Checks that `status` shows a rotation for `reason` from the last of
/// `keys` to a new key, the old one forgotten by the volume and destroyed
/// by lsvkms; adds the new key to `keys`.
fn check_rotated(setup: &Setup, keys: &mut Vec<String>, status: &Value, reason: &str) {
    let key = current_key(status);
    assert!(!keys.contains(&key), "{reason}: no new key: {status}");
    assert_eq!(status_key_ids(status), [key.as_str()], "{status}");
    let previous = keys.last().unwrap();
    assert_eq!(
        status["keys"]["last_rotation"]["outcome"]["forgotten"],
        serde_json::json!([previous]),
        "{reason}: keys so far {keys:?}: {status}"
    );
    assert_eq!(setup.key_status(previous), "destroyed", "{reason}");
    keys.push(key);
}

/// The current key's entry in `status`'s `keys.keys`.
fn current_entry(status: &Value) -> Value {
    let current = current_key(status);
    status["keys"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == current.as_str())
        .unwrap_or_else(|| panic!("no entry for the current key: {status}"))
        .clone()
}

#[test]
fn the_daemon_rotates_by_itself_for_live_bytes_encrypted_bytes_age_and_retirement() {
    let setup = Setup::new(16 * MIB, &[]);
    let skew = setup.kms.fresh_path("clock-skew", "txt");
    fs::write(&skew, "0").unwrap();
    let mut daemon = setup.serve(&["--compact-rate-mib", "0", "--clock-skew-file", path(&skew)]);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "v1", 0, 4 * MIB);
    client.flush(0).unwrap();
    let first = setup.status();
    assert!(first["keys"]["rotation_due"].is_null(), "{first}");
    assert!(first["keys"]["last_rotation"].is_null(), "{first}");
    let mut keys = vec![current_key(&first)];
    // Each key's bytes while lsvkms still unwraps it, to look for in the
    // daemon's memory once it is rotated away (all but the first came to
    // the daemon in lsvkms's answers to its own requests).
    let mut materials = vec![setup.data_key(&keys[0])];
    let entry = current_entry(&first);
    assert_eq!(entry["usage"]["live_bytes"], 4 * MIB, "{first}");
    assert!(entry["age_s"].as_u64().unwrap() < 3600, "{first}");
    // Live bytes: the key protects 4 MiB, more than 2 MiB.
    let policy = set_policy(&setup, &["--rotate-live", "2M"]);
    assert_eq!(policy["rotate_live_bytes"], 2 * MIB);
    let status = wait_for_rotation(&setup, "live-bytes");
    check_rotated(&setup, &mut keys, &status, "live-bytes");
    materials.extend(setup.try_data_key(keys.last().unwrap()));
    assert_eq!(status["keys"]["policy"]["rotate_live_bytes"], 2 * MIB);
    // The new key protects the same 4 MiB: lift the limit before it
    // rotates again.
    set_policy(&setup, &["--rotate-live", "1T"]);
    let status = wait_until_settled(&setup);
    // (It may have rotated once more for live bytes meanwhile.)
    if current_key(&status) != *keys.last().unwrap() {
        check_rotated(&setup, &mut keys, &status, "live-bytes");
    }

    // Bytes ever encrypted: 4 MiB more written than the limit allows.
    let encrypted = current_entry(&status)["usage"]["encrypted_bytes"]
        .as_u64()
        .unwrap();
    let limit = (encrypted + 2 * MIB).to_string();
    set_policy(&setup, &["--rotate-encrypted", &limit]);
    disk.write(&mut client, "v2", 0, 4 * MIB);
    client.flush(0).unwrap();
    let status = wait_for_rotation(&setup, "encrypted-bytes");
    check_rotated(&setup, &mut keys, &status, "encrypted-bytes");
    materials.extend(setup.try_data_key(keys.last().unwrap()));
    set_policy(&setup, &["--rotate-encrypted", "1T"]);
    wait_until_settled(&setup);

    // Age: the daemon's clock moves 91 days on (the default is 90).
    fs::write(&skew, (91 * DAY_S).to_string()).unwrap();
    let status = wait_for_rotation(&setup, "age");
    check_rotated(&setup, &mut keys, &status, "age");
    materials.extend(setup.try_data_key(keys.last().unwrap()));
    let entry = current_entry(&status);
    assert!(entry["age_s"].as_u64().unwrap() < 3600, "{status}");

    // Retirement: rotation by age as good as off, and the key 121 days old
    // (the default retirement age is 120 days).
    let policy = set_policy(&setup, &["--rotate-age-days", "100000"]);
    assert_eq!(policy["rotate_age_s"], 100_000 * DAY_S);
    assert_eq!(policy["retire_age_s"], 120 * DAY_S);
    fs::write(&skew, ((91 + 121) * DAY_S).to_string()).unwrap();
    let status = wait_for_rotation(&setup, "retirement");
    check_rotated(&setup, &mut keys, &status, "retirement");
    let status = wait_until_settled(&setup);
    assert_eq!(status["keys"]["rotations"], keys.len() - 1, "{status}");
    assert!(status["keys"]["last_error"].is_null(), "{status}");

    // No form of a rotated-away key is left in the daemon's memory.
    let current = setup.data_key(keys.last().unwrap());
    for (n, material) in materials.iter().enumerate() {
        assert_ne!(material, &current);
        let mut forms = key_in_base64(material);
        forms.extend(key_needles(material).iter().map(|n| n.to_vec()));
        let forms: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
        let held = memory_holds(daemon.pid(), &forms);
        assert!(
            held.is_empty(),
            "rotated-away key {n} is in the daemon: {held:?}"
        );
    }
    disk.check(&mut client, "after four rotations");
    drop(client);
    stop_cleanly(&mut daemon);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut connect(&daemon), "after four rotations and a restart");
    stop_cleanly(&mut daemon);
}

// --- 3. A key lsvkms finds compromised -----------------------------------------------

/// Appends to the audit log of the stopped `kms` an unwrap of `key_id`
/// that was allowed for `user`: what an operator's break-glass tool, or a
/// leaked service identity, leaves behind.
fn audit_allowed_unwrap(kms: &Kms, user: &str, key_id: KeyId) {
    let dir = kms.state_dir();
    let key = AuditKey::load(&dir.join(files::AUDIT_KEY)).unwrap();
    let (sink, head) = open_file_sink(&dir.join("audit.log"), &key).unwrap();
    let log = AuditLog::start(Box::new(sink), key, head).unwrap();
    log.append(AuditEntry {
        service: "break-glass".into(),
        user: Some(user.into()),
        action: "unwrap".into(),
        key_id: Some(key_id),
        context: None,
        decision: Decision::Allow,
        reason: "ok".into(),
        count: None,
    })
    .unwrap();
}

#[test]
fn a_key_lsvkms_finds_compromised_is_rotated_away_within_seconds_and_destroyed() {
    let mut setup = Setup::new(8 * MIB, &[]);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "before", 0, 4 * MIB);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());
    let (_, old_blob) = blobs(&superblock(&setup.volume)).remove(0);
    assert_eq!(setup.key_status(&old_key), "enabled");

    // lsvkms goes away: the daemon serves on and says what it cannot do.
    setup.kms.stop();
    let last = std::cell::RefCell::new(Value::Null);
    let error = wait_for(
        "the daemon to notice lsvkms is gone",
        ACT_WAIT,
        || {
            let status = setup.status();
            *last.borrow_mut() = status.clone();
            status["keys"]["last_error"].as_str().map(str::to_owned)
        },
        || format!("status: {}", last.borrow()),
    );
    assert!(error.contains("lsvkms"), "{error}");
    disk.write(&mut client, "while lsvkms is away", 4 * MIB, MIB);
    client.flush(0).unwrap();

    // mallory, not on the ACL, unwrapped the key; `audit check` finds it.
    audit_allowed_unwrap(&setup.kms, "mallory", old_key.parse().unwrap());
    let dir = path(setup.kms.state_dir()).to_owned();
    let out = setup.kms.run(&["audit", "check", "--dir", &dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("mallory") && stdout.contains(&old_key) && stdout.contains("COMPROMISED"),
        "{stdout}"
    );
    setup.kms.restart();
    assert_eq!(setup.key_status(&old_key), "compromised");

    let started = Instant::now();
    let status = wait_for_rotation(&setup, "compromised");
    eprintln!(
        "rotated away from the compromised key {:?} after lsvkms came back",
        started.elapsed()
    );
    assert_eq!(status["pid"], daemon.pid(), "the same daemon: {status}");
    let new_key = current_key(&status);
    assert_ne!(new_key, old_key);
    assert_eq!(status_key_ids(&status), [new_key.as_str()], "{status}");
    let keys = &status["keys"];
    assert_eq!(
        keys["last_rotation"]["outcome"]["destroyable"],
        serde_json::json!([old_key]),
        "{status}"
    );
    assert_eq!(keys["pending_destroy"], serde_json::json!([]), "{status}");
    assert!(keys["last_error"].is_null(), "{status}");

    // lsvkms destroyed the compromised key; the new one is fine.
    let info = setup
        .kms
        .client()
        .key_info(old_key.parse().unwrap())
        .unwrap();
    assert_eq!(
        (info.status.as_str(), info.compromised),
        ("destroyed", true)
    );
    let token = setup.alice_token();
    let kms = setup.kms.client();
    assert_eq!(
        refused(kms.unwrap(&old_blob, &setup.context(), &token)),
        409
    );
    assert_eq!(setup.key_status(&new_key), "enabled");
    let records = records_by_key(&setup.volume);
    assert!(!records.contains_key(&old_key), "{records:?}");

    disk.check(
        &mut client,
        "after the rotation away from a compromised key",
    );
    drop(client);
    stop_cleanly(&mut daemon);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut connect(&daemon), "after the rotation and a restart");
    stop_cleanly(&mut daemon);
}

// --- 4. kill -9 in the middle of a rotation, again and again ----------------------------

/// Live data of the rotation killed again and again: a daemon resumes a
/// rotation at 1 MiB/s here, moving a 1 MiB batch at once and then waiting
/// out the second, so each life moves 0 to 2 MiB; 32 MiB outlast the kills.
const KILLED_DATA_BYTES: u64 = 32 * MIB;
/// Kills while the rotation runs.
const KILLS: usize = 20;

/// One random write (flushed: acknowledged) and one random read, compared.
fn verified_io_step(client: &mut BlkClient, disk: &mut Disk, rng: &mut Rng, tag: &str) {
    let blocks = disk.size() / BLOCK;
    let len = rng.between(1, 16) * BLOCK;
    let offset = rng.between(0, blocks - len / BLOCK) * BLOCK;
    let data = fill(tag, offset, len);
    client
        .write(0, offset, &data)
        .unwrap_or_else(|e| panic!("{tag}: write at {offset}: {e:?}"));
    client.flush(0).unwrap();
    disk.put(offset, &data);
    let len = rng.between(1, 16) * BLOCK;
    let offset = rng.between(0, blocks - len / BLOCK) * BLOCK;
    let got = client.read(0, offset, len as usize).unwrap();
    if let Some(diff) = difference(&got, disk.range(offset, len), offset) {
        panic!("{tag}: read at {offset}: {diff}");
    }
}

#[test]
fn a_rotation_killed_at_20_random_points_resumes_by_itself_and_completes() {
    let setup = Setup::new(KILLED_DATA_BYTES + 8 * MIB, &[]);
    let mut rng = Rng::new("kill -9 during rotation");
    // A daemon resumes a rotation at its background rate.
    let slow = ["--compact-rate-mib", "1"];
    let mut daemon = setup.serve(&slow);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "base", 0, KILLED_DATA_BYTES);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());

    let mut rotate = Some(Background::start(&[
        "rotate",
        setup.vol(),
        "--rate-mib",
        "1",
        "--json",
    ]));
    let new_key = wait_for(
        "the rotation to start",
        ACT_WAIT,
        || {
            let status = setup.status();
            status["keys"]["rotation"]["to"].as_str().map(str::to_owned)
        },
        String::new,
    );
    // The first daemon was writing; it dies in the rotation `rotate` asked
    // for. Each next one resumes the rotation by itself as it starts.
    let mut client = Some(client);
    let mut life_started = Instant::now();
    let mut moved = Vec::new();
    for kill in 0..KILLS {
        // Every other kill comes early (startup, recovery, the resumed
        // rotation's first batch), the others anywhere in the next 1.2 s,
        // while a client writes and reads (verified).
        let delay = if kill % 2 == 0 {
            Duration::from_millis(rng.between(0, 80))
        } else {
            let client = client.get_or_insert_with(|| connect(&daemon));
            verified_io_step(client, &mut disk, &mut rng, &format!("before kill {kill}"));
            if kill % 5 == 0 {
                disk.check(client, &format!("before kill {kill}"));
            }
            Duration::from_millis(rng.between(0, 1200))
        };
        std::thread::sleep(delay.saturating_sub(life_started.elapsed()));
        if kill % 2 == 1 {
            // Where the re-encryption is (`lsvblk status` takes a few ms:
            // not before the early kills).
            let status = setup.status();
            let progress = &status["keys"]["progress"]["bytes_moved"];
            moved.push(progress.as_u64().map(|b| b >> 10));
        }
        // The volume records the rotation until it is over.
        let recorded = superblock(&setup.volume)["rotation"].clone();
        assert_eq!(
            recorded["to"], new_key,
            "the rotation is over before kill {kill} (KiB moved since each daemon's start: \
             {moved:?})"
        );
        daemon.kill9();
        drop(client.take());
        if let Some(rotate) = rotate.take() {
            let output = rotate.finish();
            assert!(!output.status.success(), "rotate survived its daemon");
        }
        // The last restart re-encrypts without a rate limit.
        let args: &[&str] = if kill + 1 == KILLS {
            &["--compact-rate-mib", "0"]
        } else {
            &slow
        };
        daemon = setup.serve(args);
        life_started = Instant::now();
    }
    eprintln!("KiB moved since each daemon's start at the later kills: {moved:?}");
    let mut client = connect(&daemon);

    let status = wait_for_rotation(&setup, "manual");
    assert_eq!(current_key(&status), new_key, "{status}");
    assert_eq!(status_key_ids(&status), [new_key.as_str()], "{status}");
    assert_eq!(
        status["keys"]["last_rotation"]["outcome"]["forgotten"],
        serde_json::json!([old_key]),
        "{status}"
    );
    assert_eq!(setup.key_status(&old_key), "destroyed");
    let records = records_by_key(&setup.volume);
    assert!(!records.contains_key(&old_key), "{records:?}");
    assert!(
        records[&new_key].1 >= KILLED_DATA_BYTES / BLOCK,
        "{records:?}"
    );
    disk.check(&mut client, "after the rotation completed");
    drop(client);
    stop_cleanly(&mut daemon);
}

// --- 5. What a rotation owes lsvkms, and what a snapshot keeps ------------------------

/// A rotation that ends while lsvkms is away owes it the old key's
/// destruction; a daemon killed then, and started again, still pays.
#[test]
fn a_key_owed_to_lsvkms_for_destruction_is_destroyed_after_a_crash_and_restart() {
    let mut setup = Setup::new(8 * MIB, &[]);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "before", 0, 3 * MIB);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());

    // 3 MiB at 1 MiB/s: lsvkms is gone long before the rotation ends.
    let rotate = Background::start(&["rotate", setup.vol(), "--rate-mib", "1", "--json"]);
    wait_for(
        "the rotation to start",
        ACT_WAIT,
        || {
            superblock(&setup.volume)["rotation"]
                .as_object()
                .map(|_| ())
        },
        String::new,
    );
    setup.kms.stop();
    let output = rotate.finish();
    let rotated = json_of(&["rotate"], &output);
    assert_eq!(
        rotated["outcome"]["destroyable"],
        serde_json::json!([old_key]),
        "{rotated}"
    );
    let status = setup.status();
    assert_eq!(
        status["keys"]["pending_destroy"],
        serde_json::json!([old_key]),
        "{status}"
    );

    daemon.kill9();
    drop(client);
    setup.kms.restart();
    assert_eq!(setup.key_status(&old_key), "enabled");
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    wait_for(
        "lsvkms to destroy the old key",
        ACT_WAIT,
        || (setup.key_status(&old_key) == "destroyed").then_some(()),
        || format!("status: {}", setup.status()),
    );
    let status = setup.status();
    assert_eq!(
        status["keys"]["pending_destroy"],
        serde_json::json!([]),
        "{status}"
    );
    disk.check(&mut connect(&daemon), "after the restart");
    stop_cleanly(&mut daemon);
}

/// A snapshot still reads blocks under the old key: the rotation keeps it
/// (in lsvkms too) until the snapshot is deleted, and then has it destroyed.
#[test]
fn a_snapshot_keeps_the_old_key_alive_until_it_is_deleted() {
    let setup = Setup::new(8 * MIB, &[]);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "snapshotted", 0, 2 * MIB);
    client.flush(0).unwrap();
    let at_snapshot = disk.clone();
    lsvblk_json(&["snapshot", "create", setup.vol(), "old", "--json"]);
    disk.write(&mut client, "after the snapshot", MIB, 2 * MIB);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());

    let rotated = lsvblk_json(&["rotate", setup.vol(), "--json"]);
    let outcome = &rotated["outcome"];
    assert_eq!(
        outcome["forgotten"],
        serde_json::json!([old_key]),
        "{rotated}"
    );
    assert_eq!(
        outcome["kept_for_snapshots"],
        serde_json::json!([old_key]),
        "{rotated}"
    );
    assert_eq!(outcome["destroyable"], serde_json::json!([]), "{rotated}");
    assert_eq!(setup.key_status(&old_key), "enabled");
    // The snapshot's segments keep their records under the old key, but
    // the volume no longer holds that key: it reads all its data (checked
    // below) under the new one.
    assert!(records_by_key(&setup.volume).contains_key(&old_key));
    let mut snapshot = setup.serve(&["--snapshot", "old", "--read-only"]);
    let mut reader = BlkClient::connect_read_only(&snapshot.socket, 1, CONNECT_WAIT).unwrap();
    at_snapshot.check(&mut reader, "the snapshot after the rotation");
    drop(reader);
    stop_cleanly(&mut snapshot);
    disk.check(&mut client, "the volume after the rotation");

    let deleted = lsvblk_json(&["snapshot", "delete", setup.vol(), "old", "--json"]);
    assert_eq!(
        deleted["keys_destroyed"],
        serde_json::json!([old_key]),
        "{deleted}"
    );
    assert_eq!(setup.key_status(&old_key), "destroyed");
    let status = setup.status();
    assert_eq!(
        status["keys"]["pending_destroy"],
        serde_json::json!([]),
        "{status}"
    );
    disk.check(&mut client, "the volume after the snapshot's deletion");
    drop(client);
    stop_cleanly(&mut daemon);
}

// --- 6. lsvkms rotates its wrapping key ---------------------------------------------

#[test]
fn after_lsvkms_rotates_its_wrapping_key_blobs_are_rewrapped_served_or_not() {
    let setup = Setup::new(8 * MIB, &[]);
    let unserved = create_volume_with(
        &setup.kms,
        8 * MIB,
        &["alice"],
        BLOCK as u32,
        &["--segment-size", "1M"],
    );
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = connect(&daemon);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "before", 0, 2 * MIB);
    client.flush(0).unwrap();
    lsvblk_json(&["snapshot", "create", setup.vol(), "snap", "--json"]);
    let before = blob_versions(&setup.volume);
    assert_eq!(
        before.len(),
        2,
        "the volume's key and the snapshot's: {before:?}"
    );
    let old_version = *before.values().next().unwrap();
    assert!(before.values().all(|v| *v == old_version), "{before:?}");
    let (_, old_blob) = blobs(&superblock(&setup.volume)).remove(0);

    let rotated = setup.kms.client().rotate_wrapping_key().unwrap();
    let version = rotated.current_version;
    assert!(version > old_version, "{rotated:?}");
    let started = Instant::now();
    let after = wait_for(
        "the daemon to rewrap its blobs",
        ACT_WAIT,
        || {
            let versions = blob_versions(&setup.volume);
            versions.values().all(|v| *v == version).then_some(versions)
        },
        || format!("{:?}", blob_versions(&setup.volume)),
    );
    eprintln!("rewrapped by the daemon after {:?}", started.elapsed());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(setup.status()["keys"]["last_error"].is_null());

    // No daemon looks after the other volume: `lsvblk rewrap` does.
    let unserved_versions = blob_versions(&unserved);
    assert!(
        unserved_versions.values().all(|v| *v == old_version),
        "{unserved_versions:?}"
    );
    let kms = setup.kms.address();
    let out = lsvblk_json(&["rewrap", path(&unserved), "--kms", &kms, "--json"]);
    assert_eq!(out["replaced"], 1, "{out}");
    let unserved_versions = blob_versions(&unserved);
    assert!(
        unserved_versions.values().all(|v| *v == version),
        "{unserved_versions:?}"
    );

    // Once lsvkms refuses the old wrapping key, only the new blobs open:
    // the volume, its snapshot and the other volume all serve again.
    setup
        .kms
        .client()
        .set_min_wrapping_key_version(version)
        .unwrap();
    let token = setup.alice_token();
    assert_eq!(
        refused(
            setup
                .kms
                .client()
                .unwrap(&old_blob, &setup.context(), &token)
        ),
        409
    );
    drop(client);
    stop_cleanly(&mut daemon);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut connect(&daemon), "with the rewrapped blob");
    let mut snapshot = setup.serve(&["--snapshot", "snap", "--read-only"]);
    let mut reader = BlkClient::connect_read_only(&snapshot.socket, 1, CONNECT_WAIT).unwrap();
    disk.check(&mut reader, "the snapshot with its rewrapped blob");
    drop(reader);
    stop_cleanly(&mut snapshot);
    stop_cleanly(&mut daemon);
    let mut other = Daemon::start(&unserved, &setup.kms, &setup.alice, &[]);
    Disk::zeros(8 * MIB).check(&mut connect(&other), "the other volume, rewrapped");
    stop_cleanly(&mut other);
}

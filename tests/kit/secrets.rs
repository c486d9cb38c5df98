//! Looking for key material where it must not be: in bytes (files, logs,
//! command output), raw or as text, and in the memory of a running process.

use std::fs;
use std::os::unix::fs::FileExt;

use base64::Engine as _;

/// How `haystack` holds `key`, if it does: raw bytes (`"raw"`), hex of the
/// whole key or of its first 16 bytes (`"hex"`, either case), or the first
/// 40 characters of its base64, standard or URL-safe (`"base64"`).
pub fn leaks(haystack: &[u8], key: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(haystack).to_lowercase();
    if haystack.windows(key.len()).any(|w| w == key) {
        return Some("raw");
    }
    if text.contains(&hex::encode(key)) || text.contains(&hex::encode(&key[..16])) {
        return Some("hex");
    }
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(key)
        .to_lowercase();
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(key)
        .to_lowercase();
    if text.contains(&b64[..40]) || text.contains(&b64url[..40]) {
        return Some("base64");
    }
    None
}

/// The key in the forms lsvkms's JSON carries it: base64 of the whole key,
/// and of its first 48 bytes (what is left if a later, shorter answer in
/// the same buffer overwrote the end).
pub fn key_in_base64(key: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        b64.encode(key).into_bytes(),
        b64.encode(&key[..48]).into_bytes(),
    ]
}

/// What [`memory_holds`] looks for of a 64-byte XTS key: each 16-byte
/// quarter. The whole key and each 32-byte half are quarters side by side,
/// so this finds them too; and a quarter alone is an AES round key as a
/// schedule holds it (AES-256's first two round keys are its key's halves
/// of a half).
pub fn key_needles(key: &[u8]) -> Vec<&[u8]> {
    assert_eq!(key.len(), 64);
    key.chunks(16).collect()
}

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
/// process is our child, so we may). Returns "needle N at ADDR in MAPPING",
/// with the threads whose stack the mapping is.
pub fn memory_holds(pid: u32, needles: &[&[u8]]) -> Vec<String> {
    const MIB: u64 = 1 << 20;
    const CHUNK: u64 = 4 * MIB;
    let threads = thread_stack_pointers(pid);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let longest = needles.iter().map(|n| n.len()).max().unwrap();
    // One pass over each chunk for all needles, however many.
    let finder = aho_corasick::AhoCorasick::new(needles).unwrap();
    let mut found = Vec::new();
    let mut bytes_read = 0u64;
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
            for hit in finder.find_overlapping_iter(&buf[..]) {
                let addr = at + hit.start() as u64;
                let stack_of: Vec<String> = threads
                    .iter()
                    .filter(|(_, sp)| (start..end).contains(sp))
                    .map(|(name, sp)| format!("{name} (sp {sp:#x})"))
                    .collect();
                found.push(format!(
                    "needle {} at {addr:#x} in {line} (stack of {stack_of:?})",
                    hit.pattern().as_usize()
                ));
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

/// The address ranges (`START-END ` as /proc/PID/maps writes them) of the
/// mappings of `pid` that are locked in memory whole (mlock: where keys go).
pub fn locked_mappings(pid: u32) -> Vec<String> {
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

//! Core dumps of our own processes, and what is in them: a small reader of
//! ELF core files (memory segments and the register notes of each thread).
//!
//! Cores are arranged without changing machine-wide settings: the child
//! gets `--allow-core-dumps` (which keeps it dumpable), a raised
//! `RLIMIT_CORE` (set between fork and exec) and a working directory of
//! its own, where a plain `core_pattern` (`core`, `core.%p` ...) puts the
//! file. A `core_pattern` that pipes to a program makes the tests skip.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Note types (linux/elf.h): general registers, FPU/SSE registers, the
/// whole XSAVE area (AVX, AVX-512 state).
pub const NT_PRSTATUS: u32 = 1;
/// See [`NT_PRSTATUS`].
pub const NT_PRFPREG: u32 = 2;
/// See [`NT_PRSTATUS`].
pub const NT_X86_XSTATE: u32 = 0x202;

/// Why cores cannot be had here, if they cannot: `core_pattern` pipes them
/// to a program (systemd-coredump, apport), which the test cannot read.
pub fn cores_unavailable() -> Option<String> {
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    pattern
        .trim()
        .starts_with('|')
        .then(|| format!("core_pattern is a pipe ({})", pattern.trim()))
}

/// Makes `command` leave a core in `dir` if it dies of a signal: working
/// directory `dir`, `RLIMIT_CORE` unlimited in the child, and
/// `--allow-core-dumps` when `allow_flag` (without it the binary must
/// refuse to dump whatever the limit).
pub fn arrange_core(command: &mut Command, dir: &Path, allow_flag: bool) {
    fs::create_dir_all(dir).unwrap();
    command.current_dir(dir);
    if allow_flag {
        command.arg("--allow-core-dumps");
    }
    // SAFETY: setrlimit(2) is async-signal-safe and only reads the struct
    // on this stack, as code between fork and exec must.
    unsafe {
        command.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &unlimited) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The core file in `dir` (named `core` or `core.PID`), waiting up to
/// `wait` for the kernel to finish writing it.
pub fn find_core(dir: &Path, wait: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        let core = fs::read_dir(dir).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("core"))
            })
        });
        if core.is_some() || Instant::now() >= deadline {
            return core;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One note of a core file.
pub struct Note {
    /// `NT_*`.
    pub kind: u32,
    /// The thread it belongs to (from the `NT_PRSTATUS` before it).
    pub tid: u32,
    /// The note's bytes.
    pub desc: Vec<u8>,
}

/// A core file: its memory segments and notes.
pub struct Core {
    bytes: Vec<u8>,
    /// (virtual address, file offset, bytes in the file) per PT_LOAD.
    segments: Vec<(u64, usize, usize)>,
    /// Every note, in file order.
    pub notes: Vec<Note>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

impl Core {
    /// Reads and parses the ELF64 little-endian core at `path`.
    pub fn read(path: &Path) -> Self {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
        assert_eq!(bytes[4], 2, "not ELF64");
        assert_eq!(u16_at(&bytes, 16), 4, "not a core file (e_type)");
        let phoff = u64_at(&bytes, 32) as usize;
        let phentsize = u16_at(&bytes, 54) as usize;
        let phnum = u16_at(&bytes, 56) as usize;
        let mut segments = Vec::new();
        let mut notes = Vec::new();
        for index in 0..phnum {
            let header = &bytes[phoff + index * phentsize..][..56];
            let (kind, offset) = (u32_at(header, 0), u64_at(header, 8) as usize);
            let (vaddr, filesz) = (u64_at(header, 16), u64_at(header, 32) as usize);
            match kind {
                1 => segments.push((vaddr, offset, filesz)),
                4 => parse_notes(&bytes[offset..offset + filesz], &mut notes),
                _ => {}
            }
        }
        Core {
            bytes,
            segments,
            notes,
        }
    }

    /// Bytes of memory the core holds.
    pub fn memory_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.2).sum()
    }

    /// The threads the core has registers of.
    pub fn threads(&self) -> Vec<u32> {
        let mut tids: Vec<u32> = self
            .notes
            .iter()
            .filter(|n| n.kind == NT_PRSTATUS)
            .map(|n| n.tid)
            .collect();
        tids.dedup();
        tids
    }

    /// Where `needle` occurs: "memory at ADDR" for memory segments, "note
    /// KIND of thread TID at OFFSET" for register notes.
    pub fn find(&self, needle: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        for &(vaddr, offset, filesz) in &self.segments {
            let segment = &self.bytes[offset..offset + filesz];
            for at in positions(segment, needle) {
                found.push(format!("memory at {:#x}", vaddr + at as u64));
            }
        }
        for note in &self.notes {
            for at in positions(&note.desc, needle) {
                found.push(format!(
                    "note {:#x} of thread {} at offset {at}",
                    note.kind, note.tid
                ));
            }
        }
        found
    }
}

/// Every offset of `needle` in `haystack`.
fn positions(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Notes of one PT_NOTE segment: name size, desc size, type, then name and
/// desc each padded to 4 bytes. A thread's notes follow its NT_PRSTATUS,
/// whose `pr_pid` (offset 32) is the thread id.
fn parse_notes(mut bytes: &[u8], notes: &mut Vec<Note>) {
    let mut tid = 0;
    while bytes.len() >= 12 {
        let name_bytes = u32_at(bytes, 0) as usize;
        let desc_bytes = u32_at(bytes, 4) as usize;
        let kind = u32_at(bytes, 8);
        let desc_at = 12 + name_bytes.next_multiple_of(4);
        let desc = bytes[desc_at..desc_at + desc_bytes].to_vec();
        if kind == NT_PRSTATUS {
            tid = u32_at(&desc, 32);
        }
        notes.push(Note { kind, tid, desc });
        bytes = &bytes[(desc_at + desc_bytes.next_multiple_of(4)).min(bytes.len())..];
    }
}

//! MAC candidates for the log's integrity at rest, one thread, in CPU time
//! (as the crypto benchmark): what authenticating a 4 KiB block and a
//! record header (64 bytes + its block table) costs with each.
//!
//! Run through `ci/bench.sh mac [--reps N] [--rep-ms N]`.
//!
//! - `polyval`: the construction the log uses (`crypto::mac`):
//!   AES-256(POLYVAL(message, domain, length)), no nonce.
//! - `hmac_sha256`: HMAC-SHA256 (the `sha2` crate, SHA-NI when the CPU has it).
//! - `poly1305`: Poly1305 with a one-time key per message made of two AES-256
//!   blocks, `AES(le64(seq) || le64(lba))` and the same with the top bit of
//!   the lba set (block numbers stay below 2^63). It needs a unique
//!   (seq, block) per message, which records, seals and checkpoints do not
//!   have: it is here for its speed only.
//! - `blake3`: keyed BLAKE3.
//!
//! Every case MACs `le64(seq) || le64(lba) || message`, as a block tag does.

mod common;
#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::hint::black_box;

use aes::Aes256;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use common::{Clock, Options, Report, Suite, Throughput};
use hmac::{Hmac, Mac as _};
use lsvblk::crypto::mac::{MacDomain, MacKey};
use poly1305::Poly1305;
use poly1305::universal_hash::UniversalHash;
use sha2::Sha256;

/// Repetitions per case when `--reps` is not given.
const REPS_DEFAULT: usize = 7;
/// Wall time of one repetition of one case when `--rep-ms` is not given.
const REP_MS_DEFAULT: u64 = 150;

/// The messages measured: (key part, label, bytes).
const MESSAGES: [(&str, &str, usize); 3] = [
    ("4k", "4 KiB block", 4096),
    ("rec1", "record of 1 block (64 + 16 B)", 80),
    ("rec32", "record of 32 blocks (64 + 512 B)", 576),
];

/// The candidates: (key part, label).
const CANDIDATES: [(&str, &str); 4] = [
    ("polyval", "AES(POLYVAL) (chosen)"),
    ("hmac_sha256", "HMAC-SHA256"),
    ("poly1305", "Poly1305, AES one-time key"),
    ("blake3", "keyed BLAKE3"),
];

fn main() {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(3));
    let mac_key = MacKey::derive_locked(&key).expect("locked memory for the MAC key");
    let mac_key = mac_key.get();
    let aes = Aes256::new(&Array::from(<[u8; 32]>::try_from(&key[..32]).expect("32")));
    let blake_key: [u8; 32] = key[32..].try_into().expect("32 bytes");
    let mut suite = Suite::new(options.clone()).with_clock(Clock::ThreadCpu);
    for (size_key, size_label, bytes) in MESSAGES {
        let message = vec![0xa5u8; bytes];
        for (name, label) in CANDIDATES {
            let message = message.clone();
            let mut seq = 0u64;
            let aes = aes.clone();
            let run: Box<dyn FnMut()> = match name {
                "polyval" => Box::new(move || {
                    seq += 1;
                    black_box(mac_key.mac(
                        MacDomain::Block,
                        &[&seq.to_le_bytes(), &7u64.to_le_bytes(), &message],
                    ));
                }),
                "hmac_sha256" => Box::new(move || {
                    seq += 1;
                    let mut mac = <Hmac<Sha256>>::new_from_slice(&key[..32]).expect("any size");
                    mac.update(&seq.to_le_bytes());
                    mac.update(&7u64.to_le_bytes());
                    mac.update(&message);
                    black_box(mac.finalize().into_bytes());
                }),
                "poly1305" => Box::new(move || {
                    seq += 1;
                    black_box(poly1305_tag(&aes, seq, 7, &message));
                }),
                _ => Box::new(move || {
                    seq += 1;
                    let mut hasher = blake3::Hasher::new_keyed(&blake_key);
                    hasher.update(&seq.to_le_bytes());
                    hasher.update(&7u64.to_le_bytes());
                    hasher.update(&message);
                    black_box(hasher.finalize());
                }),
            };
            suite.add(
                &format!("{name}_{size_key}_mbps"),
                &format!("{label}, {size_label}"),
                bytes,
                run,
            );
        }
    }
    let results = suite.run();
    report(&options, &results).finish();
}

/// Poly1305 of `le64(seq) || le64(lba) || message` under a one-time key
/// made from (seq, lba) with AES-256.
fn poly1305_tag(aes: &Aes256, seq: u64, lba: u64, message: &[u8]) -> [u8; 16] {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&seq.to_le_bytes());
    nonce[8..].copy_from_slice(&lba.to_le_bytes());
    let mut r = Array::from(nonce);
    nonce[15] |= 0x80;
    let mut s = Array::from(nonce);
    aes.encrypt_block(&mut r);
    aes.encrypt_block(&mut s);
    let mut one_time = [0u8; 32];
    one_time[..16].copy_from_slice(&r);
    one_time[16..].copy_from_slice(&s);
    let mut poly = Poly1305::new(&one_time.into());
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&seq.to_le_bytes());
    head[8..].copy_from_slice(&lba.to_le_bytes());
    poly.update_padded(&head);
    poly.update_padded(message);
    poly.finalize().into()
}

fn report(options: &Options, results: &[Throughput]) -> Report {
    let mut report = Report::new("mac", options);
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    for result in results {
        report.throughput(result, "");
    }
    for (size_key, size_label, bytes) in MESSAGES {
        for (name, label) in CANDIDATES {
            let ns = results
                .iter()
                .find(|r| r.key == format!("{name}_{size_key}_mbps"))
                .map(|r| bytes as f64 / r.median_mbps * 1e3);
            report.row(
                &format!("{name}_{size_key}_ns"),
                &format!("{label}, {size_label}"),
                ns,
                "ns",
                "per MAC, of the median",
            );
        }
    }
    report
}

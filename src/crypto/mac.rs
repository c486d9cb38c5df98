//! Message authentication codes for the log's records, seals and
//! checkpoints (integrity at rest).
//!
//! A volume's MAC key is derived from a data key, never stored:
//! `HKDF-SHA256(ikm = the 64-byte XTS key, salt = none, info = "lsvblk mac
//! v2")`, 48 bytes: a 32-byte AES-256 key `Ke` and a 16-byte POLYVAL key `H`.
//!
//! `MAC(domain, msg) = AES-256_Ke(POLYVAL_H(msg zero-padded to 16 bytes ||
//! le64(domain) || le64(len(msg))))`: hash, then a pseudo-random function.
//! It needs no nonce, so the same input MACed twice is harmless. The length
//! block makes the padding unambiguous, and the domain keeps a block tag
//! from ever standing in for a record, seal or checkpoint MAC. Forging needs
//! a POLYVAL collision under the secret `H` (probability about (message
//! blocks) / 2^128 per try) or breaking AES.
//!
//! The key lives in locked, non-dumpable memory and is zeroed on drop;
//! every MAC clears the vector registers it used.

use aes::Aes256;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use hkdf::Hkdf;
use polyval::Polyval;
use polyval::universal_hash::UniversalHash;
use sha2::Sha256;

use super::hygiene::RegisterScrub;
use super::locked::{LockedBox, scrub_stack};

/// The HKDF `info` that derives a MAC key from a data key.
const MAC_KEY_INFO: &[u8] = b"lsvblk mac v2";
/// Bytes of a MAC (record, seal, checkpoint).
pub const MAC_BYTES: usize = 16;
/// Bytes of a block tag (the first bytes of the block's MAC).
pub const TAG_BYTES: usize = 12;

/// A 16-byte MAC.
pub type Mac = [u8; MAC_BYTES];
/// A 12-byte block tag.
pub type Tag = [u8; TAG_BYTES];

/// What a MAC authenticates: part of every MAC's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacDomain {
    /// One block of ciphertext (its tag).
    Block = 1,
    /// A record header and its block table.
    Record = 2,
    /// A seal.
    Seal = 3,
    /// A checkpoint.
    Checkpoint = 4,
    /// A snapshot's index file.
    SnapshotIndex = 5,
}

/// The MAC key of one data key: an AES-256 schedule and a POLYVAL key.
pub struct MacKey {
    prf: Aes256,
    hash: Polyval,
}

impl MacKey {
    /// Derives the MAC key of the XTS key `xts_key` straight into new
    /// locked, non-dumpable memory.
    pub fn derive_locked(xts_key: &[u8; 64]) -> std::io::Result<LockedBox<MacKey>> {
        let locked = {
            let _scrub = RegisterScrub::on_drop();
            let mut okm = LockedBox::new([0u8; 48])?;
            Hkdf::<Sha256>::new(None, xts_key)
                .expand(MAC_KEY_INFO, okm.get_mut())
                .expect("48 bytes is a valid HKDF-SHA256 output length");
            let (ke, h) = okm.get().split_at(32);
            let key = MacKey {
                prf: Aes256::new(ke.try_into().expect("32 bytes")),
                hash: Polyval::new(h.try_into().expect("16 bytes")),
            };
            let locked = LockedBox::new(key);
            okm.get_mut().fill(0);
            locked?
        };
        scrub_stack();
        Ok(locked)
    }

    /// `MAC(domain, parts concatenated)`.
    pub fn mac(&self, domain: MacDomain, parts: &[&[u8]]) -> Mac {
        let _scrub = RegisterScrub::on_drop();
        let mut hasher = Hasher::new(self.hash.clone());
        for part in parts {
            hasher.absorb(part);
        }
        let mut block = hasher.finish(domain as u64).into();
        self.prf.encrypt_block(&mut block);
        block.into()
    }

    /// The tag of one block of ciphertext written with sequence number
    /// `seq` at volume block `lba`.
    pub fn block_tag(&self, seq: u64, lba: u64, ciphertext: &[u8]) -> Tag {
        let mac = self.mac(
            MacDomain::Block,
            &[&seq.to_le_bytes(), &lba.to_le_bytes(), ciphertext],
        );
        mac[..TAG_BYTES].try_into().expect("12 bytes")
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// POLYVAL over a message given in parts: whole 16-byte blocks go straight
/// to the hash, a partial one waits in `carry` for the next part.
struct Hasher {
    hash: Polyval,
    carry: [u8; 16],
    carried: usize,
    len: u64,
}

impl Hasher {
    fn new(hash: Polyval) -> Self {
        Self {
            hash,
            carry: [0; 16],
            carried: 0,
            len: 0,
        }
    }

    fn absorb(&mut self, mut part: &[u8]) {
        self.len += part.len() as u64;
        if self.carried > 0 {
            let take = part.len().min(16 - self.carried);
            self.carry[self.carried..self.carried + take].copy_from_slice(&part[..take]);
            self.carried += take;
            part = &part[take..];
            if self.carried < 16 {
                return;
            }
            self.hash.update_padded(&self.carry);
            self.carried = 0;
        }
        let whole = part.len() - part.len() % 16;
        self.hash.update_padded(&part[..whole]);
        let rest = &part[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    fn finish(mut self, domain: u64) -> [u8; 16] {
        // `update_padded` zero-pads the partial block.
        self.hash.update_padded(&self.carry[..self.carried]);
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&domain.to_le_bytes());
        lengths[8..].copy_from_slice(&self.len.to_le_bytes());
        self.hash.update_padded(&lengths);
        self.carry.fill(0);
        self.hash.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LockedBox<MacKey> {
        MacKey::derive_locked(&[7; 64]).unwrap()
    }

    #[test]
    fn parts_do_not_matter_only_their_concatenation() {
        let key = key();
        let msg: Vec<u8> = (0..100u8).collect();
        let whole = key.get().mac(MacDomain::Record, &[&msg]);
        for split in [0, 1, 15, 16, 17, 33, 99, 100] {
            let (a, b) = msg.split_at(split);
            assert_eq!(key.get().mac(MacDomain::Record, &[a, b]), whole);
        }
        assert_eq!(
            key.get()
                .mac(MacDomain::Record, &[&msg[..3], &msg[3..7], &msg[7..]]),
            whole
        );
    }

    #[test]
    fn domain_length_and_key_all_change_the_mac() {
        let key = key();
        let base = key.get().mac(MacDomain::Record, &[b"abc"]);
        assert_ne!(key.get().mac(MacDomain::Seal, &[b"abc"]), base);
        // "abc" and "abc\0" pad to the same block: the length tells them apart.
        assert_ne!(key.get().mac(MacDomain::Record, &[b"abc\0"]), base);
        let other = MacKey::derive_locked(&[8; 64]).unwrap();
        assert_ne!(other.get().mac(MacDomain::Record, &[b"abc"]), base);
    }

    #[test]
    fn block_tags_bind_seq_lba_and_ciphertext() {
        let key = key();
        let block = [3u8; 4096];
        let tag = key.get().block_tag(5, 9, &block);
        assert_ne!(key.get().block_tag(6, 9, &block), tag);
        assert_ne!(key.get().block_tag(5, 10, &block), tag);
        let mut flipped = block;
        flipped[4095] ^= 1;
        assert_ne!(key.get().block_tag(5, 9, &flipped), tag);
    }

    /// Pins the construction to a value computed independently (HKDF from
    /// Python's `hmac`, POLYVAL by its RFC 8452 definition, AES from
    /// `cryptography`): a change to either would make every volume's MACs
    /// fail.
    #[test]
    fn known_answer() {
        let key = key();
        let mac = key.get().mac(MacDomain::Checkpoint, &[b"lsvblk"]);
        assert_eq!(hex::encode(mac), KNOWN_MAC);
    }

    const KNOWN_MAC: &str = "74a15672f873c281d84bdde23dda7b6f";
}

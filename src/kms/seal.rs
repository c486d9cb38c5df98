//! The wrapped-blob format: a data key sealed under one wrapping-key version.
//!
//! A blob is a cleartext, authenticated header followed by an AEAD
//! ciphertext. The AEAD is AES-256-GCM-SIV (RFC 8452, misuse-resistant: a
//! repeated nonce leaks only equality of whole messages, never the key
//! stream). Its key is a **per-blob key** derived from the wrapping key of
//! version `v` and the blob's random 96-bit nonce:
//!
//! ```text
//! blob_key = first 8 bytes of E_k(i || nonce) for i = 0,1,2,3   (32 bytes)
//! ```
//!
//! where `E_k` is one AES-256 block encryption under the wrapping key and
//! `i` a little-endian u32: the key derivation RFC 8452 section 4 uses
//! inside GCM-SIV, applied once more. Only `E_k` needs the wrapping key, so
//! an HSM computes it (`CKM_AES_ECB`) and the wrapping key never leaves the
//! HSM; the per-blob key lives for one call in zeroized memory.
//!
//! Layout (all integers little-endian; README.md, "The key-wrapping service" has the same table):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `LSVK` |
//! | 4 | 2 | format version = 1 |
//! | 6 | 1 | AEAD id = 1 (AES-256-GCM-SIV, per-blob key as above) |
//! | 7 | 1 | key kind code (1 = AES-256-XTS) |
//! | 8 | 4 | wrapping-key version |
//! | 12 | 12 | nonce |
//! | 24 | 16 | key id |
//! | 40 | 2+n | volume id (u16 length, UTF-8) |
//! | .. | 2+n | snapshot id (u16 length, UTF-8, may be empty) |
//! | .. | 4+n | sealed payload (u32 length, ciphertext with 16-byte tag) |
//!
//! Everything before the sealed payload is the AEAD's associated data, so
//! kind, key id, version and context cannot be changed. The payload holds
//! the DEK, the creation time (u64 seconds) and the ACL (u16 count, then
//! each name as u8 length + UTF-8). After opening, the key id is derived
//! again from the DEK and must equal the header's.
//!
//! [`parse`] takes untrusted bytes: it never panics, never reads past the
//! end, and refuses trailing bytes (property test below, fuzz target
//! `tests/fuzz/fuzz_targets/seal_parse.rs`).

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use zeroize::Zeroizing;

use crate::crypto::hygiene::{RegisterScrub, scrub_vector_registers};
use crate::crypto::key::KEY_ID_BYTES;
use crate::crypto::locked::scrub_stack;
use crate::crypto::{DataKey, KeyId, KeyKind};

use super::api::KeyContext;
use super::limits::{ACL_ENTRIES_MAX, BLOB_BYTES_MAX, CONTEXT_ID_BYTES_MAX, USER_BYTES_MAX};

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"LSVK";
/// The only format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// AEAD id: AES-256-GCM-SIV under a per-blob key derived from the wrapping key.
pub const AEAD_GCM_SIV_DERIVED: u8 = 1;
/// Bytes of the nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of the AEAD tag.
pub const TAG_BYTES: usize = 16;
/// Bytes of the AES block fed to the wrapping key to derive a blob key.
pub const DERIVE_INPUT_BYTES: usize = 64;

const MAGIC_OFFSET: usize = 0;
const FORMAT_OFFSET: usize = MAGIC_OFFSET + 4;
const AEAD_OFFSET: usize = FORMAT_OFFSET + 2;
const KIND_OFFSET: usize = AEAD_OFFSET + 1;
const KEK_VERSION_OFFSET: usize = KIND_OFFSET + 1;
const NONCE_OFFSET: usize = KEK_VERSION_OFFSET + 4;
const KEY_ID_OFFSET: usize = NONCE_OFFSET + NONCE_BYTES;
/// Bytes of the fixed part of the header.
pub const FIXED_HEADER_BYTES: usize = KEY_ID_OFFSET + KEY_ID_BYTES;
const _: () = assert!(FIXED_HEADER_BYTES == 40);

/// Largest sealed payload: DEK, time, ACL count, full ACL, tag.
const PAYLOAD_BYTES_MAX: usize = 64 + 8 + 2 + ACL_ENTRIES_MAX * (1 + USER_BYTES_MAX) + TAG_BYTES;
const _: () = assert!(
    FIXED_HEADER_BYTES + 2 * (2 + CONTEXT_ID_BYTES_MAX) + 4 + PAYLOAD_BYTES_MAX <= BLOB_BYTES_MAX
);
const _: () = assert!(USER_BYTES_MAX <= u8::MAX as usize);

/// A 96-bit nonce, fresh and random for every blob.
pub type BlobNonce = [u8; NONCE_BYTES];

/// Why bytes are not a valid blob. Every variant is the peer's fault (the
/// bytes came from outside) except none: there is no "bug" variant here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The blob ends inside a field.
    #[error("blob is truncated")]
    Truncated,
    /// The blob is larger than any blob we write.
    #[error("blob of {bytes} bytes, limit {bytes_max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// Our limit.
        bytes_max: usize,
    },
    /// Not a blob at all.
    #[error("bad magic")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported format version {0}")]
    UnsupportedFormat(u16),
    /// An AEAD id this code does not know.
    #[error("unsupported AEAD id {0}")]
    UnsupportedAead(u8),
    /// A key kind code this code does not know.
    #[error("unknown key kind {0}")]
    UnknownKind(u8),
    /// Wrapping-key version 0 does not exist.
    #[error("wrapping-key version 0")]
    ZeroVersion,
    /// A length field beyond its bound.
    #[error("{field} of {bytes} bytes, limit {bytes_max}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its announced length.
        bytes: usize,
        /// Our limit.
        bytes_max: usize,
    },
    /// A text field that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// The AEAD tag does not verify: wrong key, or changed bytes.
    #[error("blob does not authenticate (tampered, or another wrapping key)")]
    Unauthentic,
    /// The payload authenticated but is malformed (only a wrapping-key
    /// compromise or a bug can cause this).
    #[error("sealed payload malformed: {0}")]
    PayloadMalformed(&'static str),
}

/// A per-blob AEAD key, zeroized on drop.
pub struct BlobKey(Zeroizing<[u8; 32]>);

impl BlobKey {
    /// The bytes each wrapping-key backend encrypts (four AES blocks) to
    /// derive the key of the blob with `nonce`.
    pub fn derive_input(nonce: &BlobNonce) -> [u8; DERIVE_INPUT_BYTES] {
        let mut input = [0u8; DERIVE_INPUT_BYTES];
        for (index, block) in input.chunks_exact_mut(16).enumerate() {
            let counter = u32::try_from(index).expect("four blocks");
            block[..4].copy_from_slice(&counter.to_le_bytes());
            block[4..].copy_from_slice(nonce);
        }
        input
    }

    /// The key made from the backend's encryption of [`BlobKey::derive_input`].
    pub fn from_derive_output(output: &[u8; DERIVE_INPUT_BYTES]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        for (index, block) in output.chunks_exact(16).enumerate() {
            key[index * 8..index * 8 + 8].copy_from_slice(&block[..8]);
        }
        BlobKey(key)
    }

    /// The key of the blob with `nonce` when the wrapping key is an AES-256
    /// key held in this process (the file backend): the four derivation
    /// blocks encrypted under `cipher`.
    pub fn derive_with(cipher: &aes::Aes256, nonce: &BlobNonce) -> Self {
        use aes::cipher::{Array, BlockCipherEncrypt};
        // AES-NI holds the wrapping key's round keys in vector registers.
        let _registers = RegisterScrub::on_drop();
        let mut blocks = Zeroizing::new(BlobKey::derive_input(nonce));
        for chunk in blocks.chunks_exact_mut(16) {
            let mut block = Array::from(<[u8; 16]>::try_from(&*chunk).expect("16-byte chunk"));
            cipher.encrypt_block(&mut block);
            chunk.copy_from_slice(&block);
            // The block is derived key material: leave no copy on the stack.
            block.fill(0);
        }
        let output: &[u8; DERIVE_INPUT_BYTES] = &blocks;
        BlobKey::from_derive_output(output)
    }

    fn cipher(&self) -> Aes256GcmSiv {
        Aes256GcmSiv::new_from_slice(&self.0[..]).expect("32-byte key")
    }
}

impl std::fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobKey(<secret>)")
    }
}

/// A parsed blob whose header is well-formed but whose AEAD has not been
/// checked yet: nothing in it is trusted except its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncheckedBlob<'a> {
    /// The wrapping-key version it claims.
    pub kek_version: u32,
    /// The AEAD nonce.
    pub nonce: BlobNonce,
    /// The key kind it claims.
    pub kind: KeyKind,
    /// The key id it claims.
    pub key_id: KeyId,
    /// The context it claims.
    pub context: KeyContext,
    aad: &'a [u8],
    sealed: &'a [u8],
}

/// What an authentic blob holds.
pub struct OpenedBlob {
    /// The data key (its id equals the header's).
    pub key: DataKey,
    /// Creation time, seconds since the UNIX epoch.
    pub created_unix_s: u64,
    /// Users allowed to unwrap it.
    pub acl: Vec<String>,
    /// The context it was sealed with.
    pub context: KeyContext,
    /// The wrapping-key version it was sealed under.
    pub kek_version: u32,
}

/// What goes into a new blob.
pub struct SealInput<'a> {
    /// The data key.
    pub key: &'a DataKey,
    /// Creation time, seconds since the UNIX epoch.
    pub created_unix_s: u64,
    /// Users allowed to unwrap it (validated by the caller).
    pub acl: &'a [String],
    /// The caller's context (validated by the caller).
    pub context: &'a KeyContext,
}

/// A fresh random nonce from the OS.
pub fn random_nonce() -> Result<BlobNonce, getrandom::Error> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

/// Seals `input` under wrapping-key version `kek_version`, whose per-blob
/// key for `nonce` is `blob_key`.
///
/// # Panics
/// If the input breaks the bounds the caller must have checked (ACL size,
/// context lengths): that is a bug, not bad input.
pub fn seal(
    input: &SealInput<'_>,
    kek_version: u32,
    nonce: &BlobNonce,
    blob_key: &BlobKey,
) -> Vec<u8> {
    assert!(kek_version > 0);
    assert!(input.acl.len() <= ACL_ENTRIES_MAX);
    let mut blob = Vec::with_capacity(BLOB_BYTES_MAX);
    blob.extend_from_slice(&MAGIC);
    blob.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    blob.push(AEAD_GCM_SIV_DERIVED);
    blob.push(input.key.kind().code());
    blob.extend_from_slice(&kek_version.to_le_bytes());
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(&input.key.id().0);
    put_text16(&mut blob, &input.context.volume_id);
    put_text16(&mut blob, &input.context.snapshot_id);
    let aad_bytes = blob.len();

    let mut payload = seal_payload(input);
    input_cipher_encrypt(blob_key, nonce, &blob[..aad_bytes], &mut payload);
    let sealed_bytes = u32::try_from(payload.len()).expect("bounded payload");
    blob.extend_from_slice(&sealed_bytes.to_le_bytes());
    blob.extend_from_slice(&payload);
    assert!(blob.len() <= BLOB_BYTES_MAX);
    blob
}

fn input_cipher_encrypt(
    blob_key: &BlobKey,
    nonce: &BlobNonce,
    aad: &[u8],
    payload: &mut Zeroizing<Vec<u8>>,
) {
    let nonce = Nonce::from(*nonce);
    blob_key
        .cipher()
        .encrypt_in_place(&nonce, aad, &mut **payload)
        .expect("payload far below the AEAD's length limit");
    wipe_aead_traces();
}

/// The AEAD built its key schedules (from the blob key and the nonce) on
/// the stack and ran them through vector registers: wipe both.
#[inline(never)]
fn wipe_aead_traces() {
    scrub_stack();
    scrub_vector_registers();
}

/// The plaintext payload, built in a zeroized buffer with room for the tag
/// (so encryption in place never reallocates and leaves a copy behind).
fn seal_payload(input: &SealInput<'_>) -> Zeroizing<Vec<u8>> {
    let mut payload = Zeroizing::new(Vec::with_capacity(PAYLOAD_BYTES_MAX));
    let material = input.key.expose_secret();
    payload.extend_from_slice(&material[..input.key.kind().material_bytes()]);
    payload.extend_from_slice(&input.created_unix_s.to_le_bytes());
    let count = u16::try_from(input.acl.len()).expect("bounded ACL");
    payload.extend_from_slice(&count.to_le_bytes());
    for user in input.acl {
        assert!(!user.is_empty() && user.len() <= USER_BYTES_MAX);
        payload.push(u8::try_from(user.len()).expect("bounded name"));
        payload.extend_from_slice(user.as_bytes());
    }
    assert!(payload.len() + TAG_BYTES <= PAYLOAD_BYTES_MAX);
    payload
}

fn put_text16(blob: &mut Vec<u8>, text: &str) {
    assert!(text.len() <= CONTEXT_ID_BYTES_MAX);
    let bytes = u16::try_from(text.len()).expect("bounded context id");
    blob.extend_from_slice(&bytes.to_le_bytes());
    blob.extend_from_slice(text.as_bytes());
}

/// Parses untrusted bytes into an [`UncheckedBlob`]. Never panics.
pub fn parse(bytes: &[u8]) -> Result<UncheckedBlob<'_>, SealError> {
    if bytes.len() > BLOB_BYTES_MAX {
        return Err(SealError::TooLarge {
            bytes: bytes.len(),
            bytes_max: BLOB_BYTES_MAX,
        });
    }
    let mut reader = Reader::new(bytes);
    let fixed = reader.take(FIXED_HEADER_BYTES)?;
    let (kek_version, nonce, kind, key_id) = parse_fixed(fixed)?;
    let volume_id = reader.text16("volume id")?;
    let snapshot_id = reader.text16("snapshot id")?;
    let aad = &bytes[..reader.position];
    let sealed_bytes = reader.u32()? as usize;
    if !(TAG_BYTES..=PAYLOAD_BYTES_MAX).contains(&sealed_bytes) {
        return Err(SealError::FieldTooLong {
            field: "sealed payload",
            bytes: sealed_bytes,
            bytes_max: PAYLOAD_BYTES_MAX,
        });
    }
    let sealed = reader.take(sealed_bytes)?;
    if reader.remaining() != 0 {
        return Err(SealError::TrailingBytes(reader.remaining()));
    }
    let context = KeyContext {
        volume_id,
        snapshot_id,
    };
    Ok(UncheckedBlob {
        kek_version,
        nonce,
        kind,
        key_id,
        context,
        aad,
        sealed,
    })
}

fn parse_fixed(fixed: &[u8]) -> Result<(u32, BlobNonce, KeyKind, KeyId), SealError> {
    let mut reader = Reader::new(fixed);
    if reader.take(4)? != MAGIC {
        return Err(SealError::BadMagic);
    }
    let format = reader.u16()?;
    if format != FORMAT_VERSION {
        return Err(SealError::UnsupportedFormat(format));
    }
    let aead = reader.u8()?;
    if aead != AEAD_GCM_SIV_DERIVED {
        return Err(SealError::UnsupportedAead(aead));
    }
    let code = reader.u8()?;
    let kind = KeyKind::from_code(code).ok_or(SealError::UnknownKind(code))?;
    let kek_version = reader.u32()?;
    if kek_version == 0 {
        return Err(SealError::ZeroVersion);
    }
    let nonce: BlobNonce = reader.take(NONCE_BYTES)?.try_into().expect("took 12");
    let key_id = KeyId(reader.take(KEY_ID_BYTES)?.try_into().expect("took 16"));
    debug_assert_eq!(reader.remaining(), 0);
    Ok((kek_version, nonce, kind, key_id))
}

impl UncheckedBlob<'_> {
    /// Checks the AEAD with `blob_key` (derived for this blob's version and
    /// nonce) and decodes the payload. The returned key's id is checked
    /// against the header's.
    pub fn open(&self, blob_key: &BlobKey) -> Result<OpenedBlob, SealError> {
        let mut payload = Zeroizing::new(Vec::with_capacity(self.sealed.len()));
        payload.extend_from_slice(self.sealed);
        let nonce = Nonce::from(self.nonce);
        let opened = blob_key
            .cipher()
            .decrypt_in_place(&nonce, self.aad, &mut *payload);
        wipe_aead_traces();
        opened.map_err(|_| SealError::Unauthentic)?;
        let (key, created_unix_s, acl) = parse_payload(self.kind, &payload)?;
        if key.id() != self.key_id {
            return Err(SealError::PayloadMalformed("key id does not match the key"));
        }
        Ok(OpenedBlob {
            key,
            created_unix_s,
            acl,
            context: self.context.clone(),
            kek_version: self.kek_version,
        })
    }
}

fn parse_payload(kind: KeyKind, payload: &[u8]) -> Result<(DataKey, u64, Vec<String>), SealError> {
    let malformed = |_| SealError::PayloadMalformed("truncated");
    let mut reader = Reader::new(payload);
    let material = reader.take(kind.material_bytes()).map_err(malformed)?;
    let key = DataKey::from_bytes(kind, material)
        .map_err(|_| SealError::PayloadMalformed("cannot hold key in locked memory"))?;
    let created_unix_s =
        u64::from_le_bytes(reader.take(8).map_err(malformed)?.try_into().expect("8"));
    let count = reader.u16().map_err(malformed)? as usize;
    if count == 0 || count > ACL_ENTRIES_MAX {
        return Err(SealError::PayloadMalformed("ACL size out of bounds"));
    }
    let mut acl = Vec::with_capacity(count);
    for _ in 0..count {
        let bytes = reader.u8().map_err(malformed)? as usize;
        let name = reader.take(bytes).map_err(malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| SealError::NotUtf8("ACL entry"))?;
        acl.push(name.to_owned());
    }
    if reader.remaining() != 0 {
        return Err(SealError::PayloadMalformed("trailing bytes"));
    }
    Ok((key, created_unix_s, acl))
}

/// A cursor over untrusted bytes that refuses to read past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], SealError> {
        if count > self.remaining() {
            return Err(SealError::Truncated);
        }
        let taken = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, SealError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, SealError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("took 2"),
        ))
    }

    fn u32(&mut self) -> Result<u32, SealError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("took 4"),
        ))
    }

    fn text16(&mut self, field: &'static str) -> Result<String, SealError> {
        let bytes = self.u16()? as usize;
        if bytes > CONTEXT_ID_BYTES_MAX {
            return Err(SealError::FieldTooLong {
                field,
                bytes,
                bytes_max: CONTEXT_ID_BYTES_MAX,
            });
        }
        let text = std::str::from_utf8(self.take(bytes)?).map_err(|_| SealError::NotUtf8(field))?;
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests;

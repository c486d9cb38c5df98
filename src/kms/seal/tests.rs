//! The blob format: round trips, tamper detection, and the parser's
//! behaviour on arbitrary and mutated untrusted bytes (property tests, run
//! in CI; the coverage-guided fuzz target is `tests/fuzz`).

use aes::Aes256;
use aes::cipher::KeyInit;
use proptest::prelude::*;

use super::*;

fn kek(seed: u8) -> Aes256 {
    Aes256::new_from_slice(&[seed; 32]).unwrap()
}

fn sample_blob() -> (DataKey, Vec<u8>) {
    let key = DataKey::from_bytes(KeyKind::Aes256Xts, &[0x5A; 64]).unwrap();
    let acl = vec!["alice".to_owned(), "bob".to_owned()];
    let context = KeyContext {
        volume_id: "vol-1".into(),
        snapshot_id: "snap-2".into(),
    };
    let input = SealInput {
        key: &key,
        created_unix_s: 1_700_000_000,
        acl: &acl,
        context: &context,
    };
    let nonce = [3u8; NONCE_BYTES];
    let blob = seal(&input, 7, &nonce, &BlobKey::derive_with(&kek(1), &nonce));
    (key, blob)
}

fn open_with(bytes: &[u8], seed: u8) -> Result<OpenedBlob, SealError> {
    let blob = parse(bytes)?;
    blob.open(&BlobKey::derive_with(&kek(seed), &blob.nonce))
}

#[test]
fn seal_then_open_gives_back_key_acl_time_and_context() {
    let (key, bytes) = sample_blob();
    let parsed = parse(&bytes).unwrap();
    assert_eq!(parsed.kek_version, 7);
    assert_eq!(parsed.key_id, key.id());
    assert_eq!(parsed.context.snapshot_id, "snap-2");
    let opened = open_with(&bytes, 1).unwrap();
    assert_eq!(opened.key.expose_secret(), key.expose_secret());
    assert_eq!(opened.acl, ["alice", "bob"]);
    assert_eq!(opened.created_unix_s, 1_700_000_000);
    assert_eq!(opened.kek_version, 7);
}

#[test]
fn blob_does_not_contain_the_key_bytes() {
    let (_, bytes) = sample_blob();
    assert!(!bytes.windows(8).any(|w| w == [0x5A; 8]));
}

#[test]
fn another_wrapping_key_cannot_open() {
    let (_, bytes) = sample_blob();
    assert_eq!(open_with(&bytes, 2).err(), Some(SealError::Unauthentic));
}

#[test]
fn every_single_bit_flip_is_refused() {
    let (_, bytes) = sample_blob();
    for index in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut changed = bytes.clone();
            changed[index] ^= bit;
            assert!(
                open_with(&changed, 1).is_err(),
                "flip at byte {index} accepted"
            );
        }
    }
}

#[test]
fn truncation_and_trailing_bytes_are_refused() {
    let (_, bytes) = sample_blob();
    for cut in 0..bytes.len() {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(parse(&longer).err(), Some(SealError::TrailingBytes(1)));
    assert!(matches!(
        parse(&vec![0u8; BLOB_BYTES_MAX + 1]),
        Err(SealError::TooLarge { .. })
    ));
}

#[test]
fn layout_offsets_match_the_documented_table() {
    let (key, bytes) = sample_blob();
    assert_eq!(&bytes[0..4], b"LSVK");
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), FORMAT_VERSION);
    assert_eq!(bytes[6], AEAD_GCM_SIV_DERIVED);
    assert_eq!(bytes[7], KeyKind::Aes256Xts.code());
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 7);
    assert_eq!(&bytes[12..24], &[3u8; 12]);
    assert_eq!(&bytes[24..40], &key.id().0);
    assert_eq!(u16::from_le_bytes([bytes[40], bytes[41]]), 5);
    assert_eq!(&bytes[42..47], b"vol-1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(blob) = parse(&bytes) {
            // Whatever parses must still fail to authenticate.
            prop_assert!(blob.open(&BlobKey::derive_with(&kek(1), &blob.nonce)).is_err());
        }
    }

    #[test]
    fn mutated_blobs_never_panic_and_never_open(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
        extra in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let (_, original) = sample_blob();
        let mut bytes = original.clone();
        for (at, value) in &edits {
            let index = at.index(bytes.len());
            bytes[index] = *value;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        bytes.extend_from_slice(&extra);
        let result = open_with(&bytes, 1);
        if bytes != original {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn a_blob_with_a_valid_header_but_random_payload_is_unauthentic(
        payload in proptest::collection::vec(any::<u8>(), TAG_BYTES..200),
    ) {
        let (_, original) = sample_blob();
        let header = parse(&original).unwrap().aad.len();
        let mut bytes = original[..header].to_vec();
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        bytes.extend_from_slice(&payload);
        prop_assert_eq!(open_with(&bytes, 1).err(), Some(SealError::Unauthentic));
    }
}

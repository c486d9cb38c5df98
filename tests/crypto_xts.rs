//! `crypto::xts` against the standard and against an independent
//! implementation.
//!
//! * IEEE 1619-2007 (XTS-AES), Annex B, vectors 10-14: the XTS-AES-256
//!   vectors, 512-byte data units, key1 = the digits of e, key2 = the digits of
//!   pi, data unit sequence numbers 0xff, 0xffff, 0xffffff, 0xffffffff and
//!   0xffffffffff. Transcribed from Botan's `src/tests/data/modes/xts.vec`
//!   ("IEEE 1619-2007 VECTOR 10".."14"), and checked against OpenSSL 3.0
//!   (through Python `cryptography`) before being committed here.
//! * Two 4096-byte-unit checks whose expected SHA-256 digests were computed
//!   with OpenSSL 3.0's AES-256-XTS the same way.
//! * A property test: random keys, tweaks, unit sizes and unit counts give the
//!   same ciphertext as the `xts-mode` crate (the oracle), and decrypting
//!   gives the plaintext back.
//!
//! Every check runs on every XTS path this CPU supports (`XtsPath`: VAES
//! with AVX-512, VAES with AVX2, AES-NI, portable), forced one at a time.

use aes::Aes256;
use aes::cipher::KeyInit;
use lsvblk::crypto::{DataUnit, Tweak, XtsCipher, XtsPath};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use xts_mode::{Xts128, get_tweak_default};

/// Key1 (the first 64 digits of e) followed by key2 (of pi), IEEE 1619
/// vectors 10-14.
const KEY_E_PI: &str = "\
    2718281828459045235360287471352662497757247093699959574966967627\
    3141592653589793238462643383279502884197169399375105820974944592";

/// The plaintext of vectors 10-14: bytes 00..ff, twice.
fn plaintext_512() -> Vec<u8> {
    (0..512u32).map(|i| i as u8).collect()
}

fn key_e_pi() -> [u8; 64] {
    hex::decode(KEY_E_PI)
        .expect("hex")
        .try_into()
        .expect("64 bytes")
}

fn joined(lines: &[&str]) -> Vec<u8> {
    hex::decode(lines.concat()).expect("hex")
}

/// Encrypts the vector plaintext as one 512-byte data unit with data unit
/// sequence number `sequence`, checks the ciphertext, and decrypts it back.
fn check_ieee_vector(sequence: u128, ciphertext: &[&str]) {
    let expected = joined(ciphertext);
    assert_eq!(expected.len(), 512);
    for cipher in ciphers(&key_e_pi()) {
        let path = cipher.path();
        let mut buf = plaintext_512();
        cipher.encrypt(&mut buf, DataUnit::BYTES_512, Tweak(sequence));
        assert!(
            buf == expected,
            "{path:?}: ciphertext differs for sequence {sequence:#x}"
        );

        cipher.decrypt(&mut buf, DataUnit::BYTES_512, Tweak(sequence));
        assert!(
            buf == plaintext_512(),
            "{path:?}: plaintext differs for sequence {sequence:#x}"
        );
    }
}

/// One cipher under `key` for each XTS path this CPU supports.
fn ciphers(key: &[u8; 64]) -> Vec<XtsCipher> {
    let paths = XtsPath::all_supported();
    assert!(paths.contains(&XtsPath::Portable));
    paths
        .into_iter()
        .map(|path| XtsCipher::with_path(key, path).expect("a supported path"))
        .collect()
}

#[test]
fn every_path_the_cpu_lacks_is_refused() {
    for path in XtsPath::ALL {
        let made = XtsCipher::with_path(&key_e_pi(), path);
        assert_eq!(made.is_ok(), path.supported(), "{path:?}");
    }
}

#[test]
fn ieee1619_vector_10_data_unit_sequence_ff() {
    check_ieee_vector(0xff, &VECTOR_10_CIPHERTEXT);
}

#[test]
fn ieee1619_vector_11_data_unit_sequence_ffff() {
    check_ieee_vector(0xffff, &VECTOR_11_CIPHERTEXT);
}

#[test]
fn ieee1619_vector_12_data_unit_sequence_ffffff() {
    check_ieee_vector(0xff_ffff, &VECTOR_12_CIPHERTEXT);
}

#[test]
fn ieee1619_vector_13_data_unit_sequence_ffffffff() {
    check_ieee_vector(0xffff_ffff, &VECTOR_13_CIPHERTEXT);
}

#[test]
fn ieee1619_vector_14_data_unit_sequence_ffffffffff() {
    check_ieee_vector(0xff_ffff_ffff, &VECTOR_14_CIPHERTEXT);
}

#[test]
fn ieee1619_vectors_10_to_14_in_one_buffer_with_per_unit_tweaks() {
    // Each vector is one data unit; encrypting them back to back in one call
    // would need consecutive sequence numbers, so check that a buffer of
    // several units is the concatenation of single-unit calls instead.
    for cipher in ciphers(&key_e_pi()) {
        let mut buf: Vec<u8> = plaintext_512().repeat(5);
        cipher.encrypt(&mut buf, DataUnit::BYTES_512, Tweak(0xff));
        for (index, unit) in buf.chunks_exact(512).enumerate() {
            let mut single = plaintext_512();
            cipher.encrypt(
                &mut single,
                DataUnit::BYTES_512,
                Tweak(0xff + index as u128),
            );
            assert!(unit == single, "{:?}: unit {index} differs", cipher.path());
        }
        assert_eq!(&buf[..512], joined(&VECTOR_10_CIPHERTEXT).as_slice());
    }
}

#[test]
fn unit_4096_starts_like_vector_10_and_matches_openssl() {
    // XTS enciphers block j of a unit with tweak E(K2, i) * alpha^j, so a
    // 4096-byte unit whose first 512 bytes are vector 10's plaintext starts
    // with vector 10's ciphertext.
    let plain: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    for cipher in ciphers(&key_e_pi()) {
        let mut buf = plain.clone();
        cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak(0xff));
        assert_eq!(&buf[..512], joined(&VECTOR_10_CIPHERTEXT).as_slice());
        assert_eq!(
            hex::encode(Sha256::digest(&buf)),
            "d74aad83ceba041c9697f0cd1a0f94a1efd98cb9740ce630724e964be6b85436",
            "{:?}",
            cipher.path()
        );
        cipher.decrypt(&mut buf, DataUnit::BYTES_4096, Tweak(0xff));
        assert!(buf == plain);
    }
}

#[test]
fn two_4096_units_carry_the_tweak_into_the_high_64_bits() {
    // Tweaks 2^64 - 1 and 2^64: the second unit's tweak is Tweak::for_block
    // (1, 0), reached by a carry out of the block-number half.
    let first = Tweak::for_block(0, u64::MAX);
    assert_eq!(first.add_units(1), Tweak::for_block(1, 0));
    let plain: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    for cipher in ciphers(&key_e_pi()) {
        let mut buf = plain.clone();
        cipher.encrypt(&mut buf, DataUnit::BYTES_4096, first);
        assert_eq!(
            hex::encode(Sha256::digest(&buf)),
            "dc2159d5862f2b8aa41c0034ef688b04bf858530c91fab3d15f9fecbd67106d3",
            "{:?}",
            cipher.path()
        );
        cipher.decrypt(&mut buf, DataUnit::BYTES_4096, first);
        assert!(buf == plain);
    }
}

#[test]
fn tweak_wraps_around_at_the_top_of_the_128_bit_space() {
    assert_eq!(Tweak(u128::MAX).add_units(1), Tweak(0));
    let key: [u8; 64] = std::array::from_fn(|i| i as u8);
    for cipher in ciphers(&key) {
        let mut wrapped = vec![0x42u8; 1024];
        cipher.encrypt(&mut wrapped, DataUnit::BYTES_512, Tweak(u128::MAX));
        let mut second = vec![0x42u8; 512];
        cipher.encrypt(&mut second, DataUnit::BYTES_512, Tweak(0));
        assert!(wrapped[512..] == second[..], "{:?}", cipher.path());
    }
}

#[test]
fn empty_buffer_is_left_alone() {
    for cipher in ciphers(&key_e_pi()) {
        let mut buf: Vec<u8> = Vec::new();
        cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak(1));
        cipher.decrypt(&mut buf, DataUnit::BYTES_512, Tweak(1));
        assert!(buf.is_empty());
    }
}

#[test]
#[should_panic(expected = "not a whole number")]
fn partial_data_unit_is_a_caller_bug() {
    let cipher = XtsCipher::new(&key_e_pi());
    let mut buf = vec![0u8; 4096 + 512];
    cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak(1));
}

#[test]
fn data_unit_sizes_are_nonzero_multiples_of_16_up_to_1_mib() {
    for bytes in [0, 8, 17, 4095, (1 << 20) + 16] {
        assert_eq!(DataUnit::new(bytes), None, "{bytes}");
    }
    for bytes in [16, 512, 4096, 1 << 20] {
        assert_eq!(
            DataUnit::new(bytes).map(DataUnit::bytes),
            Some(bytes as usize)
        );
    }
}

/// The `xts-mode` oracle: each data unit enciphered on its own with
/// `encrypt_sector` and the IEEE 1619 tweak encoding (little-endian).
fn oracle_encrypt(key: &[u8; 64], buf: &mut [u8], unit_bytes: usize, first: u128) {
    let xts = Xts128::new(
        Aes256::new_from_slice(&key[..32]).expect("32-byte key"),
        Aes256::new_from_slice(&key[32..]).expect("32-byte key"),
    );
    for (index, unit) in buf.chunks_exact_mut(unit_bytes).enumerate() {
        xts.encrypt_sector(unit, get_tweak_default(first.wrapping_add(index as u128)));
    }
}

/// Bytes of pseudo-random plaintext from `seed` (xorshift64*): cheaper for
/// proptest to generate and shrink than a 64 KiB vector.
fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Data unit sizes: the two we use, the smallest, and any multiple of 16 up
/// to 8 KiB.
fn unit_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(16usize),
        Just(512),
        Just(4096),
        (1..=512usize).prop_map(|blocks| blocks * 16),
    ]
}

/// Two different 256-bit halves (IEEE 1619 requires K1 != K2).
fn xts_key() -> impl Strategy<Value = [u8; 64]> {
    (any::<[u8; 32]>(), any::<[u8; 32]>())
        .prop_filter("K1 must differ from K2", |(k1, k2)| k1 != k2)
        .prop_map(|(k1, k2)| {
            let mut key = [0u8; 64];
            key[..32].copy_from_slice(&k1);
            key[32..].copy_from_slice(&k2);
            key
        })
}

proptest! {
    // 256 cases per path this CPU runs.
    #![proptest_config(ProptestConfig::with_cases(256 * XtsPath::all_supported().len() as u32))]

    #[test]
    fn encrypt_matches_xts_mode_and_decrypt_inverts_it(
        key in xts_key(),
        first in any::<u128>(),
        unit_bytes in unit_bytes(),
        units in 1usize..=12,
        seed in any::<u64>(),
        path in prop::sample::select(XtsPath::all_supported()),
    ) {
        let plain = pseudo_random_bytes(seed, unit_bytes * units);
        let unit = DataUnit::new(unit_bytes as u32).expect("valid unit");
        let cipher = XtsCipher::with_path(&key, path).expect("a supported path");

        let mut ours = plain.clone();
        cipher.encrypt(&mut ours, unit, Tweak(first));
        let mut theirs = plain.clone();
        oracle_encrypt(&key, &mut theirs, unit_bytes, first);
        prop_assert!(ours == theirs, "ciphertext differs from xts-mode");

        cipher.decrypt(&mut ours, unit, Tweak(first));
        prop_assert!(ours == plain, "decrypt did not restore the plaintext");
    }
}

const VECTOR_10_CIPHERTEXT: [&str; 16] = [
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
    "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
    "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
    "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
    "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
    "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
    "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
    "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
    "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
    "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
    "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
    "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
    "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
    "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
    "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
    "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
];

const VECTOR_11_CIPHERTEXT: [&str; 16] = [
    "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11",
    "e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2",
    "469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d",
    "3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201",
    "3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179",
    "8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a",
    "aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6",
    "9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80",
    "470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a",
    "bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0",
    "18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75",
    "bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63",
    "094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a",
    "7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68",
    "6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090",
    "54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
];

const VECTOR_12_CIPHERTEXT: [&str; 16] = [
    "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200",
    "a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049",
    "9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8",
    "7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1",
    "9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf",
    "5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e",
    "62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6",
    "e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879",
    "a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0",
    "97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964",
    "c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d",
    "a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a",
    "f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2",
    "480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace",
    "231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36",
    "ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
];

const VECTOR_13_CIPHERTEXT: [&str; 16] = [
    "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5",
    "520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1",
    "c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac",
    "7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e",
    "919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3",
    "50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5",
    "69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9",
    "0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c",
    "1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053",
    "027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7",
    "5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df",
    "73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00",
    "77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460",
    "d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155",
    "6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c",
    "f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
];

const VECTOR_14_CIPHERTEXT: [&str; 16] = [
    "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23",
    "50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80",
    "8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604",
    "e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4",
    "a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b",
    "50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434",
    "631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8",
    "76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff",
    "3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b",
    "f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6",
    "85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa",
    "6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc",
    "e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a",
    "0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546",
    "81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de",
    "6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
];

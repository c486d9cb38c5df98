//! AES-256 key schedules in plain Rust, independent of the code under test:
//! what a core dump or a memory scan must not contain for a known key.

/// The 15 encryption round keys of AES-256 `key` (FIPS-197 section 5.2),
/// then the 13 inner round keys of the equivalent inverse cipher
/// (InvMixColumns of round keys 13..1, what AES-NI's AESDEC uses): every
/// 16-byte value an AES implementation keeps of the key.
pub fn aes256_round_keys(key: &[u8; 32]) -> Vec<[u8; 16]> {
    let sbox = sbox();
    let mut words: Vec<[u8; 4]> = key.chunks_exact(4).map(|w| w.try_into().unwrap()).collect();
    let mut rcon = 1u8;
    for i in 8..60 {
        let mut temp = words[i - 1];
        if i % 8 == 0 {
            temp = [temp[1], temp[2], temp[3], temp[0]].map(|b| sbox[b as usize]);
            temp[0] ^= rcon;
            rcon = xtime(rcon);
        } else if i % 8 == 4 {
            temp = temp.map(|b| sbox[b as usize]);
        }
        let before = words[i - 8];
        words.push(std::array::from_fn(|j| before[j] ^ temp[j]));
    }
    let encryption: Vec<[u8; 16]> = words
        .chunks_exact(4)
        .map(|round| std::array::from_fn(|j| round[j / 4][j % 4]))
        .collect();
    let decryption = encryption[1..14].iter().map(inv_mix_columns);
    encryption.iter().copied().chain(decryption).collect()
}

/// Multiplication by x in GF(2^8) with the AES polynomial.
fn xtime(b: u8) -> u8 {
    (b << 1) ^ if b & 0x80 != 0 { 0x1b } else { 0 }
}

/// Multiplication in GF(2^8).
fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        a = xtime(a);
        b >>= 1;
    }
    product
}

/// The AES S-box: multiplicative inverse, then the affine transform.
fn sbox() -> [u8; 256] {
    std::array::from_fn(|x| {
        let x = x as u8;
        let inverse = (1..=255u8).find(|&y| gmul(x, y) == 1).unwrap_or(0);
        let mut out = 0x63;
        for shift in 0..5 {
            out ^= inverse.rotate_left(shift);
        }
        out
    })
}

/// InvMixColumns of one round key (four columns of four bytes).
fn inv_mix_columns(key: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (column, word) in key.chunks_exact(4).enumerate() {
        for row in 0..4 {
            out[4 * column + row] = gmul(word[row], 0x0e)
                ^ gmul(word[(row + 1) % 4], 0x0b)
                ^ gmul(word[(row + 2) % 4], 0x0d)
                ^ gmul(word[(row + 3) % 4], 0x09);
        }
    }
    out
}

/// Checks the schedule against FIPS-197 appendix A.3 (AES-256 key
/// expansion): if this fails, a search for round keys would look for the
/// wrong bytes.
pub fn check_against_fips_197() {
    let key: [u8; 32] =
        hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .unwrap()
            .try_into()
            .unwrap();
    let keys = aes256_round_keys(&key);
    assert_eq!(keys.len(), 28);
    assert_eq!(hex::encode(keys[0]), "603deb1015ca71be2b73aef0857d7781");
    assert_eq!(hex::encode(keys[2]), "9ba354118e6925afa51a8b5f2067fcde");
    assert_eq!(hex::encode(keys[14]), "fe4890d1e6188d0b046df344706c631e");
}

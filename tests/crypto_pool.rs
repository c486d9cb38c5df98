//! `crypto::CryptoPool`: splitting a buffer into chunks and running them on
//! threads must give exactly what one thread gives for the whole buffer.

use lsvblk::crypto::pool::PoolError;
use lsvblk::crypto::{CryptoPool, DataUnit, Tweak, XtsCipher};
use lsvblk::limits::{CRYPTO_CHUNK_BYTES_DEFAULT, CRYPTO_CHUNK_BYTES_MIN};

fn cipher() -> XtsCipher {
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(53).wrapping_add(1));
    XtsCipher::new(&key)
}

fn plaintext(bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect()
}

/// Encrypts `bytes` of plaintext through `pool` and through the cipher alone,
/// checks both ciphertexts are equal, then the same for decryption.
fn check_pool_matches_single_thread(pool: &CryptoPool, unit: DataUnit, bytes: usize) {
    let cipher = cipher();
    let first = Tweak::for_block(11, u64::MAX - 3);
    let plain = plaintext(bytes);
    let context = format!("{pool:?}, {}-byte units, {bytes} bytes", unit.bytes());

    let mut single = plain.clone();
    cipher.encrypt(&mut single, unit, first);
    let mut pooled = plain.clone();
    pool.encrypt(&cipher, &mut pooled, unit, first);
    assert!(pooled == single, "encrypt differs: {context}");

    pool.decrypt(&cipher, &mut pooled, unit, first);
    assert!(pooled == plain, "decrypt differs: {context}");
}

#[test]
fn buffer_smaller_than_one_chunk_matches_single_thread() {
    let pool = CryptoPool::new(2, 64 * 1024).unwrap();
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_4096, 16 * 1024);
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_512, 512);
}

#[test]
fn buffer_of_exactly_one_chunk_matches_single_thread() {
    let pool = CryptoPool::new(2, 64 * 1024).unwrap();
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_4096, 64 * 1024);
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_512, 64 * 1024);
}

#[test]
fn buffer_much_larger_than_one_chunk_matches_single_thread() {
    let pool = CryptoPool::new(3, 8 * 1024).unwrap();
    // 41.5 chunks: the last chunk is a partial one.
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_4096, 83 * 4096);
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_512, 83 * 4096 + 512);
    let pool = CryptoPool::new(2, CRYPTO_CHUNK_BYTES_DEFAULT).unwrap();
    check_pool_matches_single_thread(&pool, DataUnit::BYTES_4096, 4 << 20);
}

#[test]
fn chunk_that_is_not_a_multiple_of_the_unit_still_cuts_on_unit_boundaries() {
    // 12 KiB chunks hold 16 units of 768 bytes (12288 / 768 = 16, exact) but
    // 4096-byte chunks hold 5.33: the pool must round down to 5 whole units.
    let unit = DataUnit::new(768).unwrap();
    let pool = CryptoPool::new(2, 4096).unwrap();
    check_pool_matches_single_thread(&pool, unit, 768 * 37);
    let pool = CryptoPool::new(2, 3 * 4096).unwrap();
    check_pool_matches_single_thread(&pool, unit, 768 * 37);
    // A unit larger than the chunk: one unit per chunk.
    let unit = DataUnit::new(8192 + 16).unwrap();
    let pool = CryptoPool::new(2, 4096).unwrap();
    check_pool_matches_single_thread(&pool, unit, (8192 + 16) * 5);
}

#[test]
fn each_chunk_gets_the_tweak_of_its_first_unit() {
    let pool = CryptoPool::new(2, 4096).unwrap();
    let mut buf = vec![0u8; 4096 * 5];
    let seen = std::sync::Mutex::new(Vec::new());
    pool.run(&mut buf, DataUnit::BYTES_512, Tweak(100), |chunk, tweak| {
        seen.lock().unwrap().push((chunk.len(), tweak));
    });
    let mut seen = seen.into_inner().unwrap();
    seen.sort_by_key(|(_, tweak)| *tweak);
    let expected: Vec<(usize, Tweak)> = (0..5).map(|i| (4096, Tweak(100 + 8 * i))).collect();
    assert_eq!(seen, expected);
}

#[test]
fn pool_reports_the_thread_count_it_was_built_with() {
    for threads in [1, 2, 3, 5] {
        let pool = CryptoPool::new(threads, CRYPTO_CHUNK_BYTES_DEFAULT).unwrap();
        assert_eq!(pool.thread_count(), threads);
        assert_eq!(pool.chunk_bytes(), CRYPTO_CHUNK_BYTES_DEFAULT);
    }
    let per_cpu = CryptoPool::new(0, CRYPTO_CHUNK_BYTES_MIN).unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(per_cpu.thread_count(), cpus);
    let defaults = CryptoPool::with_defaults().unwrap();
    assert_eq!(defaults.thread_count(), cpus);
    assert_eq!(defaults.chunk_bytes(), CRYPTO_CHUNK_BYTES_DEFAULT);
}

#[test]
fn chunk_sizes_below_the_minimum_or_off_4_kib_are_refused() {
    for chunk_bytes in [0, 512, 2048, 4095, 4097, 6000, 4096 * 3 + 512] {
        match CryptoPool::new(1, chunk_bytes) {
            Err(PoolError::BadChunkSize {
                chunk_bytes: refused,
            }) => {
                assert_eq!(refused, chunk_bytes);
            }
            other => panic!("chunk of {chunk_bytes} bytes: expected BadChunkSize, got {other:?}"),
        }
    }
    for chunk_bytes in [CRYPTO_CHUNK_BYTES_MIN, 8192, 3 * 4096] {
        assert!(CryptoPool::new(1, chunk_bytes).is_ok(), "{chunk_bytes}");
    }
}

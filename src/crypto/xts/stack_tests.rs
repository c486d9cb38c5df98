//! What XTS leaves on the stack of the thread that ran it: without the
//! scrub, round keys (so the check can see them); with it, none, on every
//! path. Also how deep each path's frames go, against the scrub's reach.

use std::os::unix::fs::FileExt;

use super::{DataUnit, Direction, Tweak, XtsCipher, XtsPath};

/// Bytes painted below the test's frame: far more than XTS uses.
const PAINTED_BYTES: usize = 64 * 1024;
const PAINT: u8 = 0xa5;

/// Fills `PAINTED_BYTES` of stack below the caller with `PAINT` and
/// returns the painted range's lowest address. The next call the caller
/// makes runs its frames over this paint.
#[inline(never)]
fn paint_stack() -> usize {
    let mut area = [PAINT; PAINTED_BYTES];
    std::hint::black_box(&mut area);
    area.as_ptr() as usize
}

/// The painted range as it is now, read through /proc/self/mem (it is
/// dead stack: no Rust reference may read it).
fn read_stack(low: usize) -> Vec<u8> {
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut bytes = vec![0u8; PAINTED_BYTES];
    mem.read_exact_at(&mut bytes, low as u64).unwrap();
    bytes
}

/// Bytes below the top of the painted range that something overwrote.
fn depth_used(stack: &[u8]) -> usize {
    let lowest = stack
        .iter()
        .position(|b| *b != PAINT)
        .unwrap_or(stack.len());
    stack.len() - lowest
}

/// Every round key of the cipher's data and tweak keys (16 bytes each).
fn needles(key: &[u8; 64]) -> Vec<[u8; 16]> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if XtsPath::AesNi.supported() {
        let cipher = XtsCipher::with_path(key, XtsPath::AesNi).unwrap();
        if let super::Engine::X86 { data, tweak, .. } = &cipher.engine {
            all.extend(data.round_keys());
            all.extend(tweak.round_keys());
        }
        return all;
    }
    all.extend(
        key.chunks_exact(16)
            .map(|q| <[u8; 16]>::try_from(q).unwrap()),
    );
    all
}

fn holds_a_needle(stack: &[u8], needles: &[[u8; 16]]) -> bool {
    stack
        .windows(16)
        .any(|window| needles.iter().any(|n| n == window))
}

/// Runs on a thread of its own, so that the painted stack is ours alone.
fn on_fresh_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn_scoped(scope, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

#[test]
fn every_path_scrubs_the_round_keys_its_frames_held() {
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(53).wrapping_add(7));
    let needles = needles(&key);
    for path in XtsPath::all_supported() {
        let cipher = XtsCipher::with_path(&key, path).unwrap();
        for direction in [Direction::Encrypt, Direction::Decrypt] {
            // Without the scrub: keys are left behind (the check can see
            // them), and the frames fit in what the scrub covers.
            let (depth, leaked) = on_fresh_thread(|| {
                let mut buf = vec![0x11u8; 8192];
                let low = paint_stack();
                cipher.apply(&mut buf, DataUnit::BYTES_4096, Tweak(3), direction);
                let stack = read_stack(low);
                (depth_used(&stack), holds_a_needle(&stack, &needles))
            });
            eprintln!("{path:?} {direction:?}: frames reach {depth} bytes below the caller");
            assert!(
                leaked,
                "{path:?} {direction:?}: no round key found without the scrub"
            );
            let covered = cipher.callee_frames_bytes();
            assert!(
                depth + 1024 < covered,
                "{path:?} {direction:?}: {depth} bytes of frames, the scrub covers {covered}"
            );
            // With it: nothing.
            let leaked = on_fresh_thread(|| {
                let mut buf = vec![0x11u8; 8192];
                let low = paint_stack();
                match direction {
                    Direction::Encrypt => cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak(3)),
                    Direction::Decrypt => cipher.decrypt(&mut buf, DataUnit::BYTES_4096, Tweak(3)),
                }
                holds_a_needle(&read_stack(low), &needles)
            });
            assert!(
                !leaked,
                "{path:?} {direction:?}: round keys left on the stack"
            );
        }
    }
}

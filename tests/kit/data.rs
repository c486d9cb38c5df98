//! Recognisable data, and where two buffers differ, said so that a person
//! can tell which write a block came from.

/// The block of [`fill`]'s labels.
pub const BLOCK: u64 = 4096;

/// Recognisable data: every byte depends on its position and `tag`.
pub fn pattern(len: usize, tag: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ tag ^ ((i >> 9) as u8))
        .collect()
}

/// Recognisable data for `offset..offset + len` of a disk: every 4 KiB
/// block starts with `"<tag> @<offset>"` and goes on with bytes that depend
/// on both, so a block read in the wrong place, or from the wrong write,
/// names where it came from.
pub fn fill(tag: &str, offset: u64, len: u64) -> Vec<u8> {
    assert!(offset.is_multiple_of(BLOCK) && len.is_multiple_of(BLOCK));
    let mut out = Vec::with_capacity(len as usize);
    for block in (offset..offset + len).step_by(BLOCK as usize) {
        let label = format!("{tag} @{block}\n");
        let mut state = block
            ^ tag
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        out.extend_from_slice(label.as_bytes());
        while out.len() % BLOCK as usize != 0 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            out.push((state >> 56) as u8);
        }
    }
    out
}

/// What a block holds, for failure messages: `zeros`, the label [`fill`]
/// put at its start, or `unlabelled data`.
pub fn label(block: &[u8]) -> String {
    if block.iter().all(|b| *b == 0) {
        return "zeros".to_string();
    }
    let line = block.iter().take(64).position(|b| *b == b'\n');
    match line {
        Some(end)
            if block[..end]
                .iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ') =>
        {
            String::from_utf8_lossy(&block[..end]).into_owned()
        }
        _ => "unlabelled data".to_string(),
    }
}

/// Where `got` first differs from `want` (which starts at byte `offset` of
/// the disk): the byte, its sector, both values, and what the 4 KiB block
/// around it holds and should hold ([`label`]). `None` if they are equal.
pub fn difference(got: &[u8], want: &[u8], offset: u64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} bytes, want {}", got.len(), want.len()));
    }
    let at = got.iter().zip(want).position(|(g, w)| g != w)?;
    let start = at / BLOCK as usize * BLOCK as usize;
    let end = (start + BLOCK as usize).min(got.len());
    let byte = offset + at as u64;
    Some(format!(
        "first difference at byte {byte} (sector {}): got {:#04x}, want {:#04x}; \
         the block holds {:?}, want {:?}",
        byte / 512,
        got[at],
        want[at],
        label(&got[start..end]),
        label(&want[start..end]),
    ))
}

/// Compares without printing megabytes: panics with `context` and the
/// [`difference`] unless `got` equals `want` (which starts at byte
/// `offset` of the disk).
pub fn assert_same(got: &[u8], want: &[u8], offset: u64, context: &str) {
    if let Some(difference) = difference(got, want, offset) {
        panic!("{context}: {difference}");
    }
}

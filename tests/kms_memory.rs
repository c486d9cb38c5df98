//! lsvkms keeps no data key once it has answered: after many `datakey`,
//! `unwrap` and `rewrap` calls (kept-alive connections and fresh ones, so
//! that connection threads exit and leave their stacks to the cache), at
//! the default log level, no readable mapping of the process (every line
//! of /proc/PID/maps, read through /proc/PID/mem) holds any of the keys it
//! handed out: raw, hex (lower and upper case), or base64 (standard and
//! URL-safe, padded or not, and at each of the three byte alignments a key
//! can have inside a longer encoded string).

mod kit;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use kit::kms::Kms;
use kit::secrets::memory_holds;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::KmsClient;

/// Every form of `key` the search looks for.
fn encodings(key: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![
        key.to_vec(),
        hex::encode(key).into_bytes(),
        hex::encode_upper(key).into_bytes(),
    ];
    // Each 16-byte quarter raw: what is left of a copy partly overwritten.
    forms.extend(key.chunks(16).map(<[u8]>::to_vec));
    for engine in [&STANDARD, &URL_SAFE] {
        forms.push(engine.encode(key).into_bytes());
    }
    // Inside a longer string, base64 groups of three bytes start at the
    // string's start: the key's bytes from 0, 1 or 2 on are encoded as a
    // run of their own, whatever comes before and after.
    for skip in 0..3 {
        let whole_groups = (key.len() - skip) / 3 * 3;
        let run = &key[skip..skip + whole_groups];
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            forms.push(engine.encode(run).into_bytes());
        }
    }
    forms
}

#[test]
fn no_data_key_stays_in_lsvkms_memory_after_the_answers() {
    let mut kms = Kms::init_default_logging(&[]);
    kms.serve();
    let token = kms.token_text("alice", "10m");
    let kept_alive = kms.client();
    let fresh = || KmsClient::with_timeout(kms.socket(), std::time::Duration::from_secs(10));
    let mut keys = Vec::new();
    for volume in 0..6 {
        let context = KeyContext {
            volume_id: format!("vol-{volume}"),
            snapshot_id: String::new(),
        };
        // A key-bearing answer as the last call of a connection: its
        // thread then exits and its stack goes to the cache as it is.
        let generated = fresh()
            .generate_data_key(&["alice".to_owned()], &context)
            .unwrap();
        let mut blob = generated.wrapped_blob.clone();
        for _ in 0..3 {
            blob = kept_alive.rewrap(&blob).unwrap().wrapped_blob.0;
            let key = fresh().unwrap(&blob, &context, &token).unwrap();
            assert_eq!(key.id(), generated.key.id());
        }
        // And on a connection kept alive (its thread waits, idle).
        let key = kept_alive.unwrap(&blob, &context, &token).unwrap();
        assert_eq!(key.id(), generated.key.id());
        keys.push(generated.key.expose_secret().to_vec());
    }
    // Let the fresh connections' threads finish and exit.
    std::thread::sleep(std::time::Duration::from_millis(500));

    let forms: Vec<Vec<u8>> = keys.iter().flat_map(|key| encodings(key)).collect();
    let needles: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
    let found = memory_holds(kms.pid(), &needles);
    drop(kept_alive);
    assert!(
        found.is_empty(),
        "{} copies of data keys in lsvkms's memory:\n{}",
        found.len(),
        found.join("\n")
    );
}

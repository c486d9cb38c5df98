//! `lsvblk inspect` shows snapshots, key ids and ACLs, and never the data
//! key: not in any output of the command line, nor in any log.

use lsvblk::kms::api::KeyContext;
use serde_json::Value;

use super::kit::cli::{lsvblk_json, run_lsvblk};
use super::story::Story;

/// Field names that would mean key material.
const SECRET_WORDS: [&str; 5] = ["material", "secret", "plaintext", "dek", "private"];

/// Every object key in `value`, recursively.
fn field_names(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                out.push(key.to_lowercase());
                field_names(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| field_names(v, out)),
        _ => {}
    }
}

#[test]
fn inspect_shows_snapshots_key_ids_and_acls_and_never_the_data_key() {
    let h = Story::new().handoff();
    let story = &h.story;
    let key_id = story.current_key_id();
    let inspect = lsvblk_json(&["inspect", "--volume", story.vol(), "--json"]);

    let keys = inspect["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{inspect}");
    assert_eq!(keys[0]["key_id"], key_id.as_str());
    // The volume adopted the ACL change with the snapshot.
    assert_eq!(
        keys[0]["acl"],
        serde_json::json!(["alice", "bob"]),
        "{inspect}"
    );
    let snapshots = inspect["snapshots"].as_array().expect("snapshots listed");
    assert_eq!(snapshots.len(), 1, "{inspect}");
    assert_eq!(snapshots[0]["name"], "snap1");
    assert_eq!(snapshots[0]["snapshot_id"], h.snapshot["snapshot_id"]);
    assert_eq!(snapshots[0]["key_ids"], serde_json::json!([key_id]));
    assert_eq!(snapshots[0]["acl"], serde_json::json!(["alice", "bob"]));
    let mut names = Vec::new();
    field_names(&inspect, &mut names);
    for name in &names {
        assert!(
            !SECRET_WORDS.iter().any(|w| name.contains(w)),
            "inspect has a field {name:?}: {inspect}"
        );
    }

    // The data key itself, as a daemon gets it from lsvkms with alice's token.
    let superblock: Value =
        serde_json::from_slice(&std::fs::read(story.volume.join("volume.json")).unwrap()).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let blob = b64
        .decode(superblock["keys"][0]["wrapped_blob"].as_str().unwrap())
        .unwrap();
    let context = KeyContext {
        volume_id: superblock["volume_id"].as_str().unwrap().to_string(),
        snapshot_id: String::new(),
    };
    let token = std::fs::read_to_string(&story.alice).unwrap();
    let key = story
        .kms
        .client()
        .unwrap(&blob, &context, token.trim())
        .unwrap();
    assert_eq!(key.id().to_string(), key_id);
    let secret = key.expose_secret();
    // Any 16 bytes of it (an XTS key is two AES keys), raw, in hex or in
    // base64.
    let pieces: Vec<&[u8]> = secret.chunks(16).collect();
    let mut forms: Vec<String> = pieces
        .iter()
        .flat_map(|p| [hex::encode(p), hex::encode_upper(p)])
        .collect();
    forms.extend(secret.chunks(32).map(|half| b64.encode(half)));
    forms.push(b64.encode(secret));
    let outputs = [
        run_lsvblk(&["inspect", "--volume", story.vol(), "--json"]),
        run_lsvblk(&["inspect", "--volume", story.vol()]),
        run_lsvblk(&["snapshot", "list", story.vol(), "--json"]),
        run_lsvblk(&["status", story.vol(), "--json"]),
    ];
    let logs = [
        h.alice_daemon.stderr().into_bytes(),
        story.kms.stderr().into_bytes(),
    ];
    let streams = outputs
        .iter()
        .flat_map(|o| [&o.stdout, &o.stderr])
        .chain(&logs);
    for stream in streams {
        let text = String::from_utf8_lossy(stream);
        for form in &forms {
            assert!(!text.contains(form.as_str()), "the data key is in:\n{text}");
        }
        for piece in &pieces {
            assert!(
                !stream.windows(16).any(|w| w == *piece),
                "16 bytes of the data key are in:\n{text}"
            );
        }
    }
    assert!(outputs.iter().all(|o| o.status.success()));
    let text = String::from_utf8_lossy(&outputs[1].stdout);
    assert!(
        text.contains("snap1") && text.contains("alice,bob"),
        "{text}"
    );
    h.stop_alice();
}

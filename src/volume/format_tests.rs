//! Golden tests of the JSON files: every complete JSON example in
//! `docs/format.md` (taken from a real volume) must parse into its type and
//! serialize back to exactly the same text, and every fragment must parse,
//! so neither the documentation nor the field names can drift.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ParentRef, PendingAcl, RotationState, SnapshotMeta, Superblock};

const FORMAT_MD: &str = include_str!("../../docs/format.md");

/// The ```json blocks of `docs/format.md`, in order.
fn json_blocks() -> Vec<&'static str> {
    FORMAT_MD
        .split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().expect("a closed block"))
        .map(|block| block.trim_end_matches('\n'))
        .collect()
}

/// Parses `text` as `T`, serializes it the way the volume writes its files,
/// and checks that nothing changed.
fn assert_round_trips<T: DeserializeOwned + serde::Serialize>(text: &str) {
    let value: T = serde_json::from_str(text).expect("the example parses");
    let again = serde_json::to_string_pretty(&value).expect("serializes");
    assert_eq!(again, text, "the example is what the code writes");
}

/// Parses a fragment `  "name": {...},` as field `name` of an object.
fn parse_fragment<T: DeserializeOwned>(fragment: &str) -> T {
    #[derive(Deserialize)]
    struct One<T> {
        #[serde(alias = "parent", alias = "rotation")]
        value: T,
    }
    let object = format!("{{{}}}", fragment.trim().trim_end_matches(','));
    let one: One<T> = serde_json::from_str(&object).expect("the fragment parses");
    one.value
}

#[test]
fn every_json_example_of_the_format_document_is_what_the_code_writes() {
    let blocks = json_blocks();
    let mut seen = Vec::new();
    for block in &blocks {
        if block.starts_with("{\n  \"format\": \"lsvblk-volume\"") {
            assert_round_trips::<Superblock>(block);
            seen.push("volume.json");
        } else if block.starts_with("{\n  \"format\": \"lsvblk-snapshot\"") {
            assert_round_trips::<SnapshotMeta>(block);
            seen.push("snapshot");
        } else if block.starts_with("{\n  \"key_id\"") {
            assert_round_trips::<PendingAcl>(block);
            seen.push("acl-pending.json");
        } else if block.starts_with("  \"parent\"") {
            let parent: ParentRef = parse_fragment(block);
            assert_eq!(parent.snapshot, "monday");
            seen.push("parent");
        } else if block.starts_with("  \"rotation\"") {
            let rotation: RotationState = parse_fragment(block);
            assert!(!rotation.include_snapshots);
            seen.push("rotation");
        } else {
            panic!("a JSON example this test does not know:\n{block}");
        }
    }
    assert_eq!(
        seen,
        [
            "volume.json",
            "parent",
            "rotation",
            "snapshot",
            "acl-pending.json"
        ]
    );
}

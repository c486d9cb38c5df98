//! Key care and maintenance in process, against a real lsvkms service run
//! on a thread of the test (its UNIX socket in a temporary directory): no
//! process is started.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use base64::Engine;
use serde_json::Value;

use super::{KeyCare, ServiceError, maintenance};
use crate::crypto::{CryptoPool, KeyId};
use crate::kms::api::KeyContext;
use crate::kms::client::KmsClient;
use crate::kms::config::{self, Config, KekConfig};
use crate::kms::server;
use crate::kms::service::Service;
use crate::volume::{KeyPolicy, Volume, VolumeOptions, WrappedKey, new_volume_id};

const BLOCK: usize = 4096;

/// An lsvkms serving on a thread; the test process's uid is its one
/// allowed calling service.
pub(super) fn start_kms(dir: &Path) -> PathBuf {
    let state = dir.join("kms");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    config::init(
        &state,
        &Config::default_for(KekConfig::File, &[uid], "test".into()),
    )
    .unwrap();
    let config = Config::load(&state).unwrap();
    let service = Arc::new(Service::open(&state, &config).unwrap());
    let socket = dir.join("kms.sock");
    let listener = server::bind_unix(&socket, 0o600).unwrap();
    std::thread::spawn(move || server::serve_unix(listener, service));
    socket
}

/// A volume whose key lsvkms made for `alice` (as `lsvblk create` does).
fn create_volume(dir: &Path, kms: &KmsClient) -> Arc<Volume> {
    let volume_id = new_volume_id().unwrap();
    let acl = vec!["alice".to_owned()];
    let context = KeyContext {
        volume_id: hex::encode(volume_id),
        snapshot_id: String::new(),
    };
    let generated = kms.generate_data_key(&acl, &context).unwrap();
    let wrapped = WrappedKey {
        blob: base64::engine::general_purpose::STANDARD.encode(&generated.wrapped_blob),
        acl,
    };
    let options = VolumeOptions {
        pool: Some(Arc::new(CryptoPool::new(1, 64 * 1024).unwrap())),
        ..VolumeOptions::default()
    };
    let volume = Volume::create_over_base(
        &dir.join("vol"),
        None,
        1 << 20,
        volume_id,
        generated.key,
        Some(wrapped),
        &options,
    )
    .unwrap();
    Arc::new(volume)
}

/// An lsvkms on a thread and a volume whose key it made.
struct Fixture {
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// A client of the service, for the test's own questions.
    kms: KmsClient,
    volume: Arc<Volume>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_kms(dir.path());
        let kms = KmsClient::new(&socket);
        let volume = create_volume(dir.path(), &kms);
        Self {
            dir,
            socket,
            kms,
            volume,
        }
    }

    /// A caretaker of the volume that reaches lsvkms.
    fn care(&self) -> KeyCare {
        care(&self.volume, Some(KmsClient::new(&self.socket)))
    }
}

fn care(volume: &Arc<Volume>, kms: Option<KmsClient>) -> KeyCare {
    KeyCare::new(Arc::clone(volume), kms, 0, Arc::new(AtomicBool::new(false)))
}

/// Blocks 0..8, each filled with its number plus `seed`.
fn fill(volume: &Volume, seed: u8) {
    for block in 0..8u8 {
        let data = vec![block.wrapping_add(seed); BLOCK];
        volume
            .write(u64::from(block) * BLOCK as u64, &data)
            .unwrap();
    }
}

fn assert_filled(volume: &Volume, seed: u8) {
    for block in 0..8u8 {
        let mut data = vec![0; BLOCK];
        volume
            .read(u64::from(block) * BLOCK as u64, &mut data)
            .unwrap();
        assert!(
            data.iter().all(|b| *b == block.wrapping_add(seed)),
            "block {block}"
        );
    }
}

#[test]
fn a_manual_rotation_takes_a_new_key_from_lsvkms_and_destroys_the_old_one() {
    let f = Fixture::new();
    let (kms, volume) = (&f.kms, &f.volume);
    fill(volume, 1);
    let old = volume.current_key_id().unwrap();
    let care = f.care();
    let mut reports = 0;
    let outcome = care
        .rotate(
            crate::volume::RotationReason::Manual,
            None,
            None,
            false,
            &mut |_| reports += 1,
        )
        .unwrap();
    let new = volume.current_key_id().unwrap();
    assert_ne!(new, old);
    assert_eq!(outcome["current_key_id"], serde_json::json!(new));
    assert!(reports > 0, "progress was reported");
    assert_filled(volume, 1);
    // The new key came from lsvkms with the volume's ACL; the old one is
    // destroyed there, and the volume owes nothing any more.
    let info = kms.key_info(new).unwrap();
    assert_eq!(info.acl, ["alice"]);
    assert_eq!(kms.key_info(old).unwrap().status, "destroyed");
    assert!(volume.destroy_owed().unwrap().is_empty());
    let status = care.status().unwrap();
    assert_eq!(status["rotations"], 1);
    assert_eq!(status["current_key_id"], serde_json::json!(new));
}

#[test]
fn a_due_rotation_happens_on_the_next_tick() {
    let f = Fixture::new();
    let volume = &f.volume;
    let care = f.care();
    let old = volume.current_key_id().unwrap();
    care.tick();
    assert_eq!(volume.current_key_id(), Some(old), "nothing is due yet");
    volume
        .set_key_policy(&KeyPolicy {
            rotate_live_bytes: 4 * BLOCK as u64,
            ..KeyPolicy::default()
        })
        .unwrap();
    fill(volume, 7);
    care.tick();
    assert_ne!(volume.current_key_id(), Some(old));
    assert_filled(volume, 7);
    let status = care.status().unwrap();
    assert_eq!(status["last_error"], Value::Null);
    assert_eq!(status["last_rotation"]["reason"], "live-bytes");
}

#[test]
fn blobs_sealed_under_an_old_wrapping_key_are_sealed_again() {
    let f = Fixture::new();
    let (kms, volume) = (&f.kms, &f.volume);
    let care = f.care();
    assert_eq!(care.rewrap(true).unwrap()["replaced"], 0);
    kms.rotate_wrapping_key().unwrap();
    let out = care.rewrap(true).unwrap();
    assert_eq!(out["replaced"], 1);
    assert_eq!(out["wrapping_key_version"], 2);
    let blob = volume.superblock_now().unwrap().keys[0]
        .wrapped_blob
        .clone()
        .unwrap();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .unwrap();
    assert_eq!(crate::kms::seal::parse(&blob).unwrap().kek_version, 2);
}

#[test]
fn without_a_key_service_key_care_refuses_what_needs_one() {
    let f = Fixture::new();
    let volume = &f.volume;
    let care = care(volume, None);
    let rotated = care.rotate(
        crate::volume::RotationReason::Manual,
        None,
        None,
        false,
        &mut |_| {},
    );
    assert!(matches!(rotated, Err(ServiceError::NoKeyService)));
    assert!(matches!(
        care.rewrap(false),
        Err(ServiceError::NoKeyService)
    ));
    // The background look finds nothing to do and records no error.
    care.tick();
    assert_eq!(care.status().unwrap()["last_error"], Value::Null);
}

#[test]
fn a_key_lsvkms_cannot_destroy_yet_stays_owed_until_it_can() {
    let f = Fixture::new();
    let (kms, volume) = (&f.kms, &f.volume);
    let key = kms
        .generate_data_key(
            &["alice".to_owned()],
            &KeyContext {
                volume_id: "other".into(),
                snapshot_id: String::new(),
            },
        )
        .unwrap()
        .key
        .id();
    // lsvkms is unreachable: the debt is kept.
    let down = care(volume, Some(KmsClient::new(f.dir.path().join("no.sock"))));
    down.owe_destroy(&[key]);
    assert_eq!(volume.destroy_owed().unwrap(), [key]);
    // Reachable again: paid, and lsvkms has destroyed the key.
    f.care().destroy_pending();
    assert!(volume.destroy_owed().unwrap().is_empty());
    assert_eq!(kms.key_info(key).unwrap().status, "destroyed");
    // A key lsvkms does not know is dropped rather than asked for forever.
    let unknown = KeyId([0xAB; 16]);
    f.care().owe_destroy(&[unknown]);
    assert!(volume.destroy_owed().unwrap().is_empty());
}

#[test]
fn snapshots_compaction_and_space_report_what_they_did() {
    let f = Fixture::new();
    let volume = &f.volume;
    fill(volume, 3);
    let taken = maintenance::snapshot_create(volume, "before").unwrap();
    assert_eq!(taken["name"], "before");
    assert_eq!(
        taken["key_ids"],
        serde_json::json!([volume.current_key_id()])
    );
    assert!(matches!(
        maintenance::snapshot_create(volume, "before"),
        Err(crate::volume::VolumeError::SnapshotExists { .. })
    ));
    // Overwrite everything twice: the older copies are dead bytes.
    fill(volume, 4);
    fill(volume, 5);
    let space = maintenance::space(volume).unwrap();
    assert!(space["dead_bytes"].as_u64().unwrap() > 0);
    assert!(space["snapshot_pinned_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        maintenance::snapshot_delete(volume, "before").unwrap()["deleted"],
        "before"
    );
    assert!(matches!(
        maintenance::compact(volume, None, Some(1.5), None, &mut |_| {}),
        Err(crate::volume::VolumeError::BadOption(_))
    ));
    let compacted = maintenance::compact(volume, None, Some(1.0), None, &mut |_| {}).unwrap();
    assert!(
        compacted["log_bytes_after"].as_u64().unwrap()
            <= compacted["log_bytes_before"].as_u64().unwrap()
    );
    assert_filled(volume, 5);
}

#[test]
fn a_served_volume_records_its_upkeep_for_status_and_stops_when_asked() {
    let f = Fixture::new();
    let served = Arc::new(super::ServedVolume::new(
        Arc::clone(&f.volume),
        1,
        Some(KmsClient::new(&f.socket)),
    ));
    fill(&f.volume, 1);
    fill(&f.volume, 2);
    served.compact(None, Some(1.0), &mut |_| {}).unwrap();
    let old = f.volume.current_key_id().unwrap();
    served.snapshot_create("kept").unwrap();
    // An operator names the current key compromised: the rotation re-keys
    // the snapshot too, so deleting it leaves no key to keep.
    let rotated = served.rotate(Some(old), None, false, &mut |_| {}).unwrap();
    assert_eq!(rotated["reason"], "compromised");
    assert_eq!(rotated["compromised"], serde_json::json!(old));
    assert_eq!(f.kms.key_info(old).unwrap().status, "destroyed");
    assert_eq!(served.snapshot_delete("kept").unwrap()["deleted"], "kept");
    assert_filled(&f.volume, 2);
    let status = served.status().unwrap();
    assert_eq!(status["served"], true);
    assert_eq!(status["compaction"]["runs"], 1);
    assert_eq!(status["compaction"]["background_rate_mib_s"], 1);
    assert!(status["compaction"]["last"]["report"].is_object());
    assert_eq!(status["keys"]["rotations"], 1);
    // The background loop ends soon after stop().
    let background = std::thread::spawn({
        let served = Arc::clone(&served);
        move || served.background()
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let asked = std::time::Instant::now();
    served.stop();
    background.join().unwrap();
    assert!(asked.elapsed() < std::time::Duration::from_secs(2));
}

/// A token lsvkms accepts for `user` (as `lsvkms issue` makes one).
fn token(f: &Fixture, user: &str) -> String {
    issue_token(f.dir.path(), user)
}

/// A token for `user` from the lsvkms [`start_kms`] started in `dir`.
pub(super) fn issue_token(dir: &Path, user: &str) -> String {
    let state = dir.join("kms");
    let config = Config::load(&state).unwrap();
    let signer = crate::kms::auth::token::TokenSigner::load(
        config.issuer,
        &state.join(config::files::TOKEN_KEY),
    )
    .unwrap();
    signer
        .issue(user, crate::kms::service::now_unix_s(), 600)
        .unwrap()
}

#[test]
fn only_a_user_on_the_acl_unwraps_the_key_set() {
    let f = Fixture::new();
    let superblock = f.volume.superblock_now().unwrap();
    let keys = super::unwrap_all(
        &f.kms,
        &token(&f, "alice"),
        &superblock.volume_id,
        &superblock.keys,
    )
    .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(Some(keys[0].id()), f.volume.current_key_id());
    let refused = super::unwrap_all(
        &f.kms,
        &token(&f, "mallory"),
        &superblock.volume_id,
        &superblock.keys,
    );
    assert!(matches!(
        refused,
        Err(ServiceError::KeyService {
            source: crate::kms::client::ClientError::Api { status: 403, .. },
            ..
        })
    ));
    // A blob sealed for another volume is not unwrapped for this one.
    let elsewhere = super::unwrap_all(&f.kms, &token(&f, "alice"), "other", &superblock.keys);
    assert!(matches!(elsewhere, Err(ServiceError::KeyService { .. })));
    let mut bare = superblock.keys[0].clone();
    bare.wrapped_blob = None;
    assert!(matches!(
        super::wrapped_blob(&bare),
        Err(ServiceError::NoWrappedBlob { .. })
    ));
    bare.wrapped_blob = Some("not base64!".into());
    assert!(matches!(
        super::wrapped_blob(&bare),
        Err(ServiceError::BlobNotBase64 { .. })
    ));
}

#[test]
fn a_paused_upkeep_stops_its_compaction_and_starts_none_until_the_pause_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let f = Fixture::new();
    let served = Arc::new(super::ServedVolume::new(Arc::clone(&f.volume), 1, None));
    // The whole volume written, then every other block again: the first
    // writes' segments are half live, and compacting them moves 512 KiB.
    for (seed, step) in [(1u8, 1), (2, 2)] {
        for block in (0..256u64).step_by(step) {
            let data = vec![seed; BLOCK];
            f.volume.write(block * BLOCK as u64, &data).unwrap();
        }
    }
    f.volume.log().roll_heads().unwrap();
    // A compaction at 1 MiB/s runs for a while; the pause stops it.
    let compaction = std::thread::spawn({
        let served = Arc::clone(&served);
        move || served.compact(Some(1), Some(1.0), &mut |_| {})
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while served.status().unwrap()["compaction"]["running"].is_null() {
        assert!(Instant::now() < deadline, "the compaction did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    let holds = Arc::new(AtomicBool::new(true));
    let asked = Instant::now();
    assert!(served.pause_while(Box::new({
        let holds = Arc::clone(&holds);
        move || holds.load(Ordering::SeqCst)
    })));
    assert!(asked.elapsed() < super::served::PAUSE_WAIT);
    assert!(compaction.join().unwrap().is_err(), "the compaction ran on");
    // While the pause holds, a compaction stops before it writes.
    assert!(served.is_paused());
    let mark = f.volume.log().write_mark();
    assert!(served.compact(None, Some(1.0), &mut |_| {}).is_err());
    assert_eq!(f.volume.log().write_mark(), mark);
    // Once it no longer holds, the upkeep goes on.
    holds.store(false, Ordering::SeqCst);
    assert!(!served.is_paused());
    served.compact(None, Some(1.0), &mut |_| {}).unwrap();
    for block in 0..256u64 {
        let mut data = vec![0; BLOCK];
        f.volume.read(block * BLOCK as u64, &mut data).unwrap();
        let seed = if block % 2 == 0 { 2 } else { 1 };
        assert!(data.iter().all(|b| *b == seed));
    }
}

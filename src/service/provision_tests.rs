//! Creating, cloning, changing the ACL and rotating a volume no daemon
//! serves, against a real lsvkms on a thread of the test (as in
//! `tests.rs`): what `lsvblk create`, `clone`, `acl set` and `rotate`
//! (without a daemon) do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tests::{issue_token, start_kms};
use super::{
    NewClone, NewVolume, RotateRequest, ServiceError, clone_snapshot, create_volume,
    rotate_unserved, set_acl, unwrap_all,
};
use crate::crypto::CryptoPool;
use crate::kms::client::{ClientError, KmsClient};
use crate::remote::RemoteStore;
use crate::volume::{
    KeyPolicy, Superblock, Volume, VolumeError, VolumeLock, VolumeOptions, pending_acl,
};

const BLOCK: usize = 4096;

/// An lsvkms on a thread and a temporary directory for volumes.
struct Kms {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Kms {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_kms(dir.path());
        Self { dir, socket }
    }

    fn client(&self) -> KmsClient {
        KmsClient::new(&self.socket)
    }

    fn token(&self, user: &str) -> String {
        issue_token(self.dir.path(), user)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A volume `name` of 1 MiB whose key is sealed for `alice`.
    fn create(&self, name: &str, policy: Option<KeyPolicy>) -> super::Created {
        let new = NewVolume {
            dir: &self.path(name),
            size_bytes: 1 << 20,
            acl: &["alice".to_owned()],
            options: VolumeOptions::default(),
            policy,
            store: None,
            base: None,
        };
        create_volume(&self.client(), new).unwrap()
    }

    /// The volume in `dir` opened with every key `user` may unwrap.
    fn open_as(&self, dir: &Path, user: &str) -> Result<Volume, ServiceError> {
        let superblock = Superblock::load(dir)?;
        let lock = VolumeLock::acquire(dir, false)?;
        let keys = unwrap_all(
            &self.client(),
            &self.token(user),
            &superblock.volume_id,
            &superblock.keys,
        )?;
        let options = VolumeOptions {
            pool: Some(Arc::new(CryptoPool::new(1, 64 * 1024)?)),
            ..VolumeOptions::default()
        };
        Ok(Volume::open_locked(dir, lock, keys, &options)?)
    }
}

fn refused_by_lsvkms(result: Result<impl std::fmt::Debug, ServiceError>) -> bool {
    matches!(
        result,
        Err(ServiceError::KeyService {
            source: ClientError::Api { status: 403, .. },
            ..
        })
    )
}

/// Writes block `block` full of `byte`.
fn put(volume: &Volume, block: u64, byte: u8) {
    volume.write(block * BLOCK as u64, &[byte; BLOCK]).unwrap();
}

/// The first byte of block `block`, after checking the whole block holds it.
fn byte_of(volume: &Volume, block: u64) -> u8 {
    let mut data = vec![0; BLOCK];
    volume.read(block * BLOCK as u64, &mut data).unwrap();
    assert!(data.iter().all(|b| *b == data[0]), "block {block} is whole");
    data[0]
}

#[test]
fn a_created_volume_has_a_key_lsvkms_sealed_for_its_acl_and_id() {
    let kms = Kms::start();
    let policy = KeyPolicy {
        rotate_age_s: 3600,
        ..KeyPolicy::default()
    };
    let created = kms.create("vol", Some(policy.clone()));
    let superblock = Superblock::load(&kms.path("vol")).unwrap();
    assert_eq!(superblock.volume_id, created.volume_id);
    assert_eq!(superblock.current_key_id, created.key_id);
    assert_eq!(superblock.key_policy, policy);
    assert_eq!(superblock.keys[0].acl, ["alice"]);
    let info = kms.client().key_info(created.key_id).unwrap();
    assert_eq!(info.acl, ["alice"]);
    // alice may open it and bob may not; the volume is closed (unlocked).
    let volume = kms.open_as(&kms.path("vol"), "alice").unwrap();
    put(&volume, 0, 9);
    assert_eq!(byte_of(&volume, 0), 9);
    volume.close().unwrap();
    assert!(refused_by_lsvkms(kms.open_as(&kms.path("vol"), "bob")));
}

#[test]
fn a_volume_lsvkms_gives_no_key_for_is_not_created() {
    let kms = Kms::start();
    let down = KmsClient::new(kms.path("no.sock"));
    let new = NewVolume {
        dir: &kms.path("vol"),
        size_bytes: 1 << 20,
        acl: &["alice".to_owned()],
        options: VolumeOptions::default(),
        policy: None,
        store: None,
        base: None,
    };
    let failed = create_volume(&down, new);
    assert!(matches!(failed, Err(ServiceError::KeyService { .. })));
    assert!(!kms.path("vol").exists());
}

#[test]
fn a_used_directory_or_store_is_refused_before_lsvkms_is_asked() {
    let kms = Kms::start();
    // lsvkms is not even reachable: the refusals come first.
    let down = KmsClient::new(kms.path("no.sock"));
    let store = RemoteStore {
        store: Arc::new(crate::objstore::memory::MemoryStore::new()),
        location: "memory".into(),
        threads: 1,
    };
    let acl = ["alice".to_owned()];
    let create = |client: &KmsClient, dir: &str, store: Option<&RemoteStore>| {
        let new = NewVolume {
            dir: &kms.path(dir),
            size_bytes: 1 << 20,
            acl: &acl,
            options: VolumeOptions::default(),
            policy: None,
            store,
            base: None,
        };
        create_volume(client, new)
    };
    std::fs::create_dir(kms.path("used")).unwrap();
    std::fs::write(kms.path("used/file"), b"x").unwrap();
    let used = create(&down, "used", None);
    assert!(matches!(
        used,
        Err(ServiceError::Volume(VolumeError::AlreadyExists { .. }))
    ));
    // Into the store with a real lsvkms: the volume is put there.
    let created = create(&kms.client(), "vol", Some(&store)).unwrap();
    assert!(
        kms.path("vol")
            .join(crate::remote::LOCAL_STATE_FILE)
            .exists()
    );
    let taken = create(&down, "other", Some(&store));
    assert!(matches!(taken, Err(ServiceError::Remote(_))), "{taken:?}");
    assert!(!kms.path("other").exists());
    assert_eq!(
        Superblock::load(&kms.path("vol")).unwrap().volume_id,
        created.volume_id
    );
}

#[test]
fn a_clone_shares_the_snapshot_has_its_own_key_and_needs_the_snapshot_acl() {
    let kms = Kms::start();
    let parent = kms.create("vol", None);
    let volume = kms.open_as(&kms.path("vol"), "alice").unwrap();
    put(&volume, 0, 1);
    volume.create_snapshot("snap").unwrap();
    put(&volume, 0, 2);
    volume.close().unwrap();
    let clone = |user: &str, dir: &str| {
        let request = NewClone {
            parent: &kms.path("vol"),
            snapshot: "snap",
            dir: &kms.path(dir),
            acl: &["alice".to_owned(), "bob".to_owned()],
        };
        clone_snapshot(&kms.client(), &kms.token(user), request)
    };
    // mallory is not on the snapshot's ACL: nothing is created.
    assert!(refused_by_lsvkms(clone("mallory", "stolen")));
    assert!(!kms.path("stolen").exists());
    let cloned = clone("alice", "clone").unwrap();
    assert_ne!(cloned.created.volume_id, parent.volume_id);
    assert_ne!(cloned.created.key_id, parent.key_id);
    assert_eq!(
        kms.client().key_info(cloned.created.key_id).unwrap().acl,
        ["alice", "bob"]
    );
    // The clone reads the snapshot's block and writes under its own key.
    let clone = kms.open_as(&kms.path("clone"), "alice").unwrap();
    assert_eq!(byte_of(&clone, 0), 1);
    put(&clone, 1, 3);
    assert_eq!(clone.current_key_id(), Some(cloned.created.key_id));
    clone.close().unwrap();
}

#[test]
fn a_new_acl_waits_for_the_next_snapshot_and_needs_a_user_on_the_current_one() {
    let kms = Kms::start();
    let created = kms.create("vol", None);
    let dir = kms.path("vol");
    let bob = ["bob".to_owned()];
    assert!(refused_by_lsvkms(set_acl(
        &dir,
        &kms.client(),
        &kms.token("mallory"),
        &bob
    )));
    assert!(pending_acl(&dir).unwrap().is_none());
    let pending = set_acl(&dir, &kms.client(), &kms.token("alice"), &bob).unwrap();
    assert_eq!(pending.key_id, created.key_id);
    assert_eq!(pending.acl, bob);
    assert_eq!(
        pending_acl(&dir).unwrap().unwrap().wrapped_blob,
        pending.wrapped_blob
    );
    // The volume itself still carries the old ACL until its next snapshot.
    assert_eq!(Superblock::load(&dir).unwrap().keys[0].acl, ["alice"]);
}

#[test]
fn a_volume_no_daemon_serves_is_rotated_here_by_a_user_on_its_acl() {
    let kms = Kms::start();
    let created = kms.create("vol", None);
    let dir = kms.path("vol");
    let volume = kms.open_as(&dir, "alice").unwrap();
    put(&volume, 0, 5);
    put(&volume, 1, 6);
    // Held by someone else (a daemon): busy, nothing asked of lsvkms.
    let asked = RotateRequest {
        compromised: Some(created.key_id),
        ..RotateRequest::default()
    };
    let busy = rotate_unserved(&dir, kms.client(), &kms.token("alice"), &asked, &mut |_| {});
    assert!(matches!(
        busy,
        Err(ServiceError::Volume(VolumeError::Busy { .. }))
    ));
    volume.close().unwrap();
    let refused = rotate_unserved(
        &dir,
        kms.client(),
        &kms.token("mallory"),
        &asked,
        &mut |_| {},
    );
    assert!(refused_by_lsvkms(refused));
    assert_eq!(
        Superblock::load(&dir).unwrap().current_key_id,
        created.key_id
    );
    let mut reports = 0;
    let outcome = rotate_unserved(&dir, kms.client(), &kms.token("alice"), &asked, &mut |_| {
        reports += 1
    })
    .unwrap();
    assert!(reports > 0, "progress was reported");
    assert_eq!(outcome["compromised"], serde_json::json!(created.key_id));
    assert_eq!(outcome["reason"], "compromised");
    // A compromised key is destroyed at once; the data is intact under the new key.
    assert_eq!(
        kms.client().key_info(created.key_id).unwrap().status,
        "destroyed"
    );
    let volume = kms.open_as(&dir, "alice").unwrap();
    assert_ne!(volume.current_key_id(), Some(created.key_id));
    assert_eq!((byte_of(&volume, 0), byte_of(&volume, 1)), (5, 6));
    volume.close().unwrap();
}

//! What the store may hand us that is wrong: each a clear error, never
//! wrong data.

use bytes::Bytes;
use lsvblk::objstore::{ObjectKey, ObjectStore};
use lsvblk::remote::StoredObject;

use crate::kit::ceph::cluster;
use crate::kit::cli::exit;
use crate::{MIB, Setup, lsvblk, refused, write_private};

const DATA: i32 = 65;

#[test]
fn wrong_credentials_and_a_missing_bucket_are_clear_errors() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("refusals", 4 * MIB);
    let create = |store_args: Vec<String>| {
        let volume = setup.kms.fresh_path("refused", "d");
        let mut args = vec![
            "create",
            "--volume",
            volume.to_str().unwrap(),
            "--size",
            "4M",
        ];
        args.extend(["--acl", "alice", "--kms"]);
        let address = setup.kms.address();
        args.push(&address);
        args.extend(store_args.iter().map(String::as_str));
        let output = lsvblk().run(&args);
        assert!(
            !volume.exists(),
            "nothing is created when the store refuses"
        );
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let secret = "not-the-secret-0123456789";
    write_private(
        &setup.credentials,
        &format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={secret}\n",
            cluster().var("AWS_ACCESS_KEY_ID")
        ),
    );
    let (code, stderr) = create(setup.store_args_for(&format!("s3://{}/x", cluster().bucket())));
    assert_eq!(code, Some(exit::DENIED), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(!stderr.contains(secret), "the secret must never be shown");

    write_private(
        &setup.credentials,
        &format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
            cluster().var("AWS_ACCESS_KEY_ID"),
            cluster().var("AWS_SECRET_ACCESS_KEY")
        ),
    );
    let (code, stderr) = create(setup.store_args_for("s3://no-such-bucket-lsvblk/x"));
    assert_eq!(code, Some(exit::USAGE), "{stderr}");
    assert!(stderr.contains("no-such-bucket-lsvblk"), "{stderr}");

    // A prefix that holds a volume already.
    let setup = Setup::new("taken", 4 * MIB);
    let mut args = setup.store_args();
    args.extend(["--segment-size".to_string(), "1M".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let volume = setup.kms.fresh_path("second", "d");
    let output = lsvblk().run(
        &[
            &[
                "create",
                "--volume",
                volume.to_str().unwrap(),
                "--size",
                "4M",
                "--acl",
                "alice",
            ][..],
            &["--kms", &setup.kms.address()],
            &args,
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(exit::USAGE), "{stderr}");
    assert!(stderr.contains("already holds volume"), "{stderr}");
}

/// A served, written and cleanly stopped volume: its objects are all up.
fn written(name: &str) -> Setup {
    let setup = Setup::new(name, 8 * MIB);
    let mut daemon = setup.serve(&setup.volume, &[]);
    let mut client = daemon.client(1);
    for i in 0..8u64 {
        client
            .write(0, i * MIB, &vec![i as u8 + 1; MIB as usize])
            .unwrap();
    }
    client.flush(0).unwrap();
    drop(client);
    daemon.stop_cleanly();
    setup
}

fn objects(setup: &Setup, folder: &str) -> Vec<ObjectKey> {
    let store = setup.store();
    let mut keys: Vec<ObjectKey> = store
        .list(&ObjectKey::new("e0000000000000002").unwrap())
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.as_str().contains(folder))
        .collect();
    keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    keys
}

#[test]
fn truncated_altered_and_foreign_objects_are_refused() {
    let _shared = cluster().fault_lock(false);
    let setup = written("corrupt");
    let store = setup.store();
    let segment = objects(&setup, "/segments/")
        .pop()
        .expect("segments were uploaded");
    let original = store.get(&segment).unwrap();

    let attempt = |what: &str| {
        let (code, stderr) = refused(setup.spawn(&setup.fresh_dir(), &[]));
        assert_eq!(code, Some(DATA), "{what}: {stderr}");
        stderr
    };
    store
        .put(&segment, original.slice(..original.len() - 100))
        .unwrap();
    let stderr = attempt("truncated");
    assert!(stderr.contains("truncated"), "{stderr}");
    let mut altered = original.to_vec();
    altered[original.len() / 2] ^= 0x40;
    store.put(&segment, Bytes::from(altered)).unwrap();
    let stderr = attempt("altered");
    assert!(stderr.contains("CRC32C"), "{stderr}");
    store.put(&segment, original).unwrap();

    // Another volume's metadata, under a name that checks out, newer than
    // ours: the rebuild sees whose volume it is and refuses.
    let other = written("foreign");
    let foreign = objects(&other, "/meta/").pop().unwrap();
    let bytes = other.store().get(&foreign).unwrap();
    let described = StoredObject::parse(foreign.as_str()).unwrap();
    let newest = StoredObject {
        number: u64::MAX >> 8,
        ..described
    };
    store.put(&newest.key(), bytes).unwrap();
    let stderr = attempt("foreign");
    assert!(stderr.contains("not volume"), "{stderr}");
}

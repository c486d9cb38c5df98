//! Volumes over a plain, read-only base image (`lsvblk create --base`), end
//! to end with real lsvkms and lsvblk processes and libblkio as the VMM:
//! a new volume reads the image as it is; writes (whole blocks, part of a
//! block, a discard) go encrypted into the volume and survive a key
//! rotation, a compaction and a restart; a second volume on the same image
//! sees it pristine, and once flattened (online) serves without the image;
//! a snapshot's clone reads through to the image; `inspect` says how much
//! still comes from the image; the image is never written; and a volume
//! whose image changed is refused (65). About 1 s.

mod kit;

use std::path::Path;
use std::time::SystemTime;

use kit::cli::{assert_refused, json_of, lsvblk_json, run_lsvblk};
use kit::daemon::Daemon;
use kit::data::fill;
use kit::dirs::files_with_contents;
use kit::disk::Disk;
use kit::kms::Kms;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// sysexits EX_DATAERR: a volume lsvblk will not read.
const DATA: i32 = 65;
/// The image: 6 MiB and 1000 bytes (its last block is partial).
const IMAGE_BYTES: u64 = 6 * MIB + 1000;

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The image's bytes: recognisable plaintext.
fn image_bytes() -> Vec<u8> {
    let mut bytes = fill("BASE-IMAGE", 0, IMAGE_BYTES.next_multiple_of(BLOCK));
    bytes.truncate(IMAGE_BYTES as usize);
    bytes
}

/// `lsvblk create --base IMAGE` (no --size) for alice; the new volume.
fn create_over(kms: &Kms, image: &Path) -> std::path::PathBuf {
    let volume = kms.fresh_path("volume", "d");
    let address = kms.address();
    let args = [
        "create",
        "--volume",
        path(&volume),
        "--base",
        path(image),
        "--acl",
        "alice",
        "--kms",
        &address,
        "--json",
    ];
    let created = json_of(&args, &run_lsvblk(&args));
    // The image's size, rounded up to a whole block.
    assert_eq!(created["size_bytes"], 1537 * BLOCK, "{created}");
    assert_eq!(
        created["base"],
        image.canonicalize().unwrap().to_str().unwrap()
    );
    volume
}

/// What a volume over the image reads before anything is written.
fn pristine() -> Disk {
    let mut disk = Disk::zeros(1537 * BLOCK);
    disk.put(0, &image_bytes());
    disk
}

#[test]
fn a_volume_over_a_base_image_reads_it_writes_encrypted_and_never_changes_it() {
    let kms = Kms::start();
    let alice = kms.token("alice");
    let image = kms.fresh_path("base", "img");
    std::fs::write(&image, image_bytes()).unwrap();
    let image_mtime = std::fs::metadata(&image).unwrap().modified().unwrap();
    let volume = create_over(&kms, &image);

    let mut daemon = Daemon::start(&volume, &kms, &alice, &[]);
    let mut client = daemon.client(1);
    let mut disk = pristine();
    disk.check(&mut client, "a new volume reads its base");
    disk.write(&mut client, "ALICE-WRITES", MIB, MIB);
    // Part of a block: the rest of the block comes from the base.
    let part = [0x5Au8; 512];
    client.write(0, 3 * MIB + 512, &part).unwrap();
    disk.put(3 * MIB + 512, &part);
    // A discarded range reads as zeros, not as the base.
    client.discard(0, 4 * MIB, MIB).unwrap();
    disk.zero(4 * MIB, MIB);
    client.flush(0).unwrap();
    disk.check(&mut client, "after writes over the base");

    // A second volume on the same image, served at the same time, sees the
    // image as it was.
    let other = create_over(&kms, &image);
    let mut other_daemon = Daemon::start(&other, &kms, &alice, &[]);
    let mut other_client = other_daemon.client(1);
    let mut other_disk = pristine();
    other_disk.check(&mut other_client, "a second volume on the image");
    // Flattened while served: every block it still read from the image is
    // copied into it; it then serves without the image.
    other_disk.write(&mut other_client, "OTHER-WRITES", 2 * MIB, MIB);
    let flattened = lsvblk_json(&["flatten", path(&other), "--json"]);
    assert_eq!(flattened["bytes_copied"], 1537 * BLOCK - MIB, "{flattened}");
    assert_eq!(flattened["base_dropped"], true, "{flattened}");
    other_disk.check(&mut other_client, "after the flatten");
    drop(other_client);
    other_daemon.stop_cleanly();
    let away = image.with_extension("away");
    std::fs::rename(&image, &away).unwrap();
    let mut other_daemon = Daemon::start(&other, &kms, &alice, &[]);
    other_disk.check(&mut other_daemon.client(1), "flattened, without its image");
    other_daemon.stop_cleanly();
    std::fs::rename(&away, &image).unwrap();

    // `inspect` counts what still reads from the image: all but the 1 MiB
    // written, the block written in part, and the 1 MiB discarded.
    let held = 2 * MIB + BLOCK;
    let inspected = lsvblk_json(&["inspect", "--volume", path(&volume), "--json"]);
    let base = &inspected["space"]["base"];
    assert_eq!(base["held_bytes"], held, "{inspected}");
    assert_eq!(base["from_base_bytes"], IMAGE_BYTES - held, "{inspected}");
    assert_eq!(base["image_bytes"], IMAGE_BYTES, "{inspected}");

    // A snapshot, then more writes; the snapshot's clone reads the
    // snapshot's blocks and, below them, the image.
    lsvblk_json(&["snapshot", "create", path(&volume), "snap", "--json"]);
    let at_snapshot = disk.clone();
    disk.write(&mut client, "AFTER-SNAPSHOT", 5 * MIB, MIB);
    let clone = kms.fresh_path("clone", "d");
    let address = kms.address();
    let args = [
        "clone",
        path(&volume),
        "snap",
        path(&clone),
        "--acl",
        "alice",
        "--kms",
        &address,
        "--token-file",
        path(&alice),
        "--json",
    ];
    json_of(&args, &run_lsvblk(&args));
    let mut clone_daemon = Daemon::start(&clone, &kms, &alice, &[]);
    at_snapshot.check(&mut clone_daemon.client(1), "the snapshot's clone");
    clone_daemon.stop_cleanly();

    // A key rotation, a compaction and a restart keep every block where
    // it was (the image's blocks are not the volume's to re-encrypt).
    lsvblk_json(&["rotate", path(&volume), "--json"]);
    disk.check(&mut client, "after a key rotation");
    lsvblk_json(&["compact", path(&volume), "--json"]);
    disk.check(&mut client, "after a compaction");
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = Daemon::start(&volume, &kms, &alice, &[]);
    disk.check(&mut daemon.client(1), "after a restart");
    daemon.stop_cleanly();

    // The image was only read; what was written is only in the volume,
    // encrypted.
    assert_eq!(std::fs::read(&image).unwrap(), image_bytes());
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        image_mtime
    );
    let files = [&volume, &other, &clone].map(|dir| files_with_contents(dir));
    for (file, bytes) in files.iter().flatten() {
        for text in [
            &b"ALICE-WRITES"[..],
            b"AFTER-SNAPSHOT",
            b"OTHER-WRITES",
            b"BASE-IMAGE",
        ] {
            assert!(
                !bytes.windows(text.len()).any(|w| w == text),
                "{} holds {:?} in the clear",
                file.display(),
                String::from_utf8_lossy(text)
            );
        }
    }

    // An image touched after create (same bytes, new mtime) is refused.
    let file = std::fs::File::options().write(true).open(&image).unwrap();
    file.set_modified(SystemTime::now()).unwrap();
    let socket = kms.fresh_path("refused", "sock");
    let output = run_lsvblk(&[
        "serve",
        "--volume",
        path(&volume),
        "--socket",
        path(&socket),
        "--kms",
        &address,
        "--token-file",
        path(&alice),
    ]);
    assert_refused(
        "serve over a changed image",
        &output,
        DATA,
        &[
            "base image",
            path(&image.canonicalize().unwrap()),
            "modified",
        ],
    );
    // Put back as it was, it serves again.
    file.set_modified(image_mtime).unwrap();
    let mut daemon = Daemon::start(&volume, &kms, &alice, &[]);
    disk.check(&mut daemon.client(1), "with the image as it was");
    daemon.stop_cleanly();
}

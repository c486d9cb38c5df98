//! The audit file sink on disk, written through the real [`AuditLog`]:
//! padded ahead, reopened where it ended, a torn batch set aside, one
//! writer at a time, a head that does not match refused. (Beside `file`
//! and `log` rather than inside `file`, so that `file` does not depend on
//! `log` even in tests.)

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::file::{AuditOpenError, Head, head_path, open_file_sink, read_head};
use super::log::AuditLog;
use super::{AuditKey, sample_entry};
use crate::kms::limits::AUDIT_PREALLOC_BYTES;

fn append(path: &Path, count: u32) -> Head {
    let key = AuditKey::from_bytes([5; 32]);
    let (sink, head) = open_file_sink(path, &key).unwrap();
    let log = AuditLog::start(Box::new(sink), key, head).unwrap();
    for n in 0..count {
        log.append(sample_entry(&format!("s{n}"))).unwrap();
    }
    drop(log);
    read_head(&head_path(path)).unwrap().unwrap()
}

#[test]
fn the_file_is_padded_ahead_and_reopens_where_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = append(&path, 3);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        AUDIT_PREALLOC_BYTES
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end_matches('\n').lines().count(), 3);
    assert_eq!(
        head.end_offset as usize,
        text.trim_end_matches('\n').len() + 1
    );
    assert_eq!(append(&path, 2).seq, 5);
}

#[test]
fn a_torn_batch_is_set_aside_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = append(&path, 2);
    // A crash mid-batch: half a record after the last one, and a later
    // page of the batch that made it to disk.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"{\"seq\":3,\"time\":\"half", head.end_offset)
        .unwrap();
    file.write_all_at(b"ghost\n", head.end_offset + 4096)
        .unwrap();
    assert_eq!(append(&path, 1).seq, 3);
    let cut: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".cut."))
        .collect();
    assert_eq!(cut.len(), 1);
    assert!(
        std::fs::read_to_string(cut[0].path())
            .unwrap()
            .ends_with("ghost")
    );
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let key = AuditKey::from_bytes([5; 32]);
    let first = open_file_sink(&path, &key).unwrap();
    assert!(matches!(
        open_file_sink(&path, &key),
        Err(AuditOpenError::InUse { .. })
    ));
    drop(first);
    open_file_sink(&path, &key).unwrap();
}

#[test]
fn a_head_that_does_not_match_the_log_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut head = append(&path, 2);
    head.end_offset -= 1;
    std::fs::write(head_path(&path), serde_json::to_vec(&head).unwrap()).unwrap();
    let key = AuditKey::from_bytes([5; 32]);
    assert!(matches!(
        open_file_sink(&path, &key),
        Err(AuditOpenError::Damaged { .. })
    ));
}

//! The metrics of a volume kept in an object store: its upload backlog and
//! whether the store takes the uploads. Read at scrape time from the
//! `upload` part of the status `lsvblk status` shows (absent for a volume
//! kept only in its directory: then none of these are exposed).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use serde_json::Value;

use super::encode::{counters, gauges, no_labels};

fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    gauges(encoder, name, help, &[(no_labels(), value)])
}

/// Encodes `upload` (the uploader's status), if the volume has one.
pub fn encode_upload(encoder: &mut DescriptorEncoder, upload: &Value) -> fmt::Result {
    if upload.is_null() {
        return Ok(());
    }
    gauge(
        encoder,
        "lsvblk_upload_backlog_bytes",
        "Bytes of sealed segments not in the object store yet.",
        number(&upload["backlog_bytes"]),
    )?;
    gauge(
        encoder,
        "lsvblk_upload_backlog_segments",
        "Sealed segments not in the object store yet.",
        number(&upload["backlog_segments"]),
    )?;
    counters(
        encoder,
        "lsvblk_upload_bytes",
        "Bytes of segments this daemon uploaded.",
        &[(no_labels(), number(&upload["uploaded_bytes"]))],
    )?;
    gauge(
        encoder,
        "lsvblk_upload_failing",
        "1 while uploads fail (store unreachable, or refusing them).",
        u64::from(!upload["last_error"].is_null()),
    )?;
    gauge(
        encoder,
        "lsvblk_upload_store_refusing",
        "1 while the object store refuses the uploads (credentials refused or revoked, bucket gone): FLUSHes that wait for the store fail.",
        u64::from(!upload["refused"].is_null()),
    )?;
    gauge(
        encoder,
        "lsvblk_upload_fenced",
        "1 once a newer writer took the volume over (this daemon's uploads stopped).",
        u64::from(!upload["fenced_by"].is_null()),
    )
}

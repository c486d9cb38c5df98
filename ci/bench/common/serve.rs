//! A volume served the way every benchmark serves it: made by `lsvblk
//! create` for [`super::USER`], served by `lsvblk serve` with one virtqueue of
//! [`QUEUE_SIZE`] descriptors and warnings-only logs, stopped with SIGTERM
//! when dropped; and a libblkio client with one queue of the same size.

use std::path::Path;

use crate::kit::blkio::ClientOptions;
use crate::kit::cli::Lsvblk;
use crate::kit::daemon::ServeOptions;
use crate::kit::process::OnDrop;

/// Descriptors of the one virtqueue (lsvblk's and libblkio's default).
pub const QUEUE_SIZE: i32 = 256;

/// The `lsvblk` at `program`, its commands and daemons logging warnings
/// only.
pub fn lsvblk_at(program: &Path) -> Lsvblk {
    Lsvblk::at(program).with_env("RUST_LOG", "warn")
}

/// `lsvblk serve` with one queue of [`QUEUE_SIZE`] and `extra_args`,
/// called `name` in messages; with `clean_exit_expected`, a warning if it
/// does not exit 0 on SIGTERM.
pub fn serve_options(
    lsvblk: &Lsvblk,
    name: &str,
    extra_args: &[&str],
    clean_exit_expected: bool,
) -> ServeOptions {
    serve_options_with_queues(lsvblk, name, 1, extra_args, clean_exit_expected)
}

/// [`serve_options`] with `queues` virtqueues of [`QUEUE_SIZE`].
pub fn serve_options_with_queues(
    lsvblk: &Lsvblk,
    name: &str,
    queues: u16,
    extra_args: &[&str],
    clean_exit_expected: bool,
) -> ServeOptions {
    let queue_size = QUEUE_SIZE.to_string();
    let queues = queues.to_string();
    let mut args = vec!["--num-queues", &queues, "--queue-size", &queue_size];
    args.extend_from_slice(extra_args);
    ServeOptions {
        lsvblk: lsvblk.clone(),
        name: name.to_owned(),
        on_drop: OnDrop::Terminate {
            clean_exit_expected,
        },
        ..ServeOptions::args(&args)
    }
}

/// A client with one queue of [`QUEUE_SIZE`] and a shared region of
/// `region_bytes`.
pub fn client_options(region_bytes: usize) -> ClientOptions {
    client_options_with_queues(region_bytes, 1)
}

/// [`client_options`] with `queues` queues of [`QUEUE_SIZE`], each with an
/// equal slice of the region.
pub fn client_options_with_queues(region_bytes: usize, queues: i32) -> ClientOptions {
    ClientOptions {
        queue_size: Some(QUEUE_SIZE),
        region_bytes,
        ..ClientOptions::queues(queues)
    }
}

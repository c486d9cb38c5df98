//! The modes of what the library creates. A volume's files hold its data
//! (encrypted, but whoever can write them can destroy or roll it back) and
//! lsvkms's hold keys: every file is created `0600` and every directory
//! `0700`, whatever the umask of the process that embeds the library (the
//! binaries also set umask 077). Where another user needs access (the
//! vhost-user socket) the caller sets a mode explicitly.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file the library creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the library creates.
pub const DIR_MODE: u32 = 0o700;

/// Options that create a file with [`FILE_MODE`] (add read/write/create).
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) `path` for writing, with [`FILE_MODE`].
pub fn create_private_file(path: &Path) -> io::Result<File> {
    private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Creates the directory `path` with [`DIR_MODE`]; its parent must exist.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates `path` and its missing parents, each with [`DIR_MODE`];
/// directories that exist are left as they are.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

//! `lsvblk`: create, serve and inspect encrypted, log-structured volumes.
//!
//! A thin command line over the library: parse, call, print. Exit codes
//! follow sysexits(3) so scripts can tell a refused key from a typo.

mod acl;
mod admin;
mod clone;
mod compact;
mod control;
mod create;
mod daemon;
mod docs;
mod exit;
mod flatten;
mod image;
mod inspect;
mod keys;
mod kms;
mod lease;
mod progress;
mod remote_handover;
mod remote_serve;
mod rotate;
mod scrub;
mod serve;
mod services;
mod size;
mod snapshot;
mod store;

use clap::Subcommand;
use lsvblk::ops::cli::{CommandLine, Program};

/// How `lsvblk` names itself in `--help`, `--version` and its man pages.
const PROGRAM: Program = Program {
    name: "lsvblk",
    about: "Encrypted, log-structured virtual disks for VMs, served over vhost-user-blk",
    long_about: Some(
        "Encrypted, log-structured virtual disks for VMs, served over vhost-user-blk.\n\n\
Every block is encrypted with AES-256-XTS and appended to a log of segment files; the data \
key is released by the key-wrapping service (lsvkms) only to users on the volume's ACL.",
    ),
};

#[derive(Subcommand)]
enum Command {
    /// Create a volume: ask lsvkms for a data key sealed with an ACL, store
    /// the wrapped key in the volume, print the key id (never the key).
    Create(create::CreateArgs),
    /// Serve a volume over vhost-user-blk until SIGTERM/SIGINT.
    Serve(Box<serve::ServeArgs>),
    /// Show a volume's geometry, keys (ids only), ACLs, snapshots and
    /// space use (live and dead bytes).
    Inspect(inspect::InspectArgs),
    /// Take, list and delete snapshots (O(1), also while served).
    #[command(subcommand_required = true)]
    Snapshot(snapshot::SnapshotArgs),
    /// Make a writable clone of a snapshot (copy-on-write, its own key).
    Clone(clone::CloneArgs),
    /// Change the ACL of the volume's key (effective at the next snapshot).
    Acl(acl::AclArgs),
    /// Compact the log now: move live blocks out of mostly-dead segments and
    /// delete those (progress bar; through the daemon if one serves it).
    Compact(compact::CompactArgs),
    /// Copy the blocks a volume still reads from its base image into the
    /// volume, encrypted, online (progress bar; through its daemon); then
    /// the image is no longer needed.
    Flatten(flatten::FlattenArgs),
    /// Read every block of the volume through its checks (CRC and MAC tag
    /// before decryption) and list the blocks that fail; exit 65 if any
    /// does (through the daemon serving it, else with --kms/--token-file).
    Scrub(scrub::ScrubArgs),
    /// Whether the volume is served, space use, running compaction, keys
    /// (age, bytes encrypted, bytes live), rotation due or in progress.
    Status(compact::StatusArgs),
    /// Rotate the volume's data key now, online: new writes use a new key at
    /// once, the old key's blocks are re-encrypted, then it is destroyed.
    Rotate(rotate::RotateArgs),
    /// Seal every wrapped key of the volume (and its snapshots) again under
    /// lsvkms's newest wrapping key.
    Rewrap(rotate::RewrapArgs),
    /// Show or change when keys are rotated and retired.
    Policy(rotate::PolicyCommand),
    /// Write a raw disk image into a volume that no daemon serves (holes
    /// and zero blocks are not written; `-` reads stdin).
    Import(image::ImportArgs),
    /// Write a volume, or one of its snapshots, out as a raw image (sparse
    /// file; `-` writes stdout). Works on a served volume.
    Export(image::ExportArgs),
    /// Print the shell completion script (bash, zsh, fish, ...) to stdout.
    Completions(docs::CompletionsArgs),
    /// Write the manual pages (lsvblk.1 and one per subcommand) to DIR.
    Man(docs::ManArgs),
}

fn main() {
    if let Err(error) = lsvblk::ops::cli::protect_process() {
        eprintln!("lsvblk: error: cannot disable core dumps: {error}");
        std::process::exit(exit::SOFTWARE);
    }
    let cli = CommandLine::<Command>::parse_for(&PROGRAM);
    lsvblk::ops::cli::init_logging("info");
    let result = match cli.command {
        Command::Create(args) => create::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Clone(args) => clone::run(args),
        Command::Acl(args) => acl::run(args),
        Command::Compact(args) => compact::run(args),
        Command::Flatten(args) => flatten::run(args),
        Command::Scrub(args) => scrub::run(args),
        Command::Status(args) => compact::status(args),
        Command::Rotate(args) => rotate::rotate(args),
        Command::Rewrap(args) => rotate::rewrap(args),
        Command::Policy(args) => rotate::policy(args),
        Command::Import(args) => image::import(args),
        Command::Export(args) => image::export(args),
        Command::Completions(args) => {
            docs::completions(args, CommandLine::<Command>::command_for(&PROGRAM))
        }
        Command::Man(args) => docs::man(args, CommandLine::<Command>::command_for(&PROGRAM)),
    };
    if let Err(failure) = result {
        eprintln!("lsvblk: error: {failure}");
        std::process::exit(exit::exit_code(&failure));
    }
}

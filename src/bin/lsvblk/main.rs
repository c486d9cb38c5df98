//! `lsvblk`: create, serve and inspect encrypted, log-structured volumes.
//!
//! A thin command line over the library: parse, call, print. Exit codes
//! follow sysexits(3) so scripts can tell a refused key from a typo.

mod control;
mod create;
mod exit;
mod inspect;
mod keys;
mod kms;
mod progress;
mod serve;
mod size;

use clap::{Parser, Subcommand};

/// Encrypted, log-structured virtual disks for VMs, served over vhost-user-blk.
///
/// Every block is encrypted with AES-256-XTS and appended to a log of
/// segment files; the data key is released by the key-wrapping service
/// (lsvkms) only to users on the volume's ACL.
#[derive(Parser)]
#[command(name = "lsvblk", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a volume: ask lsvkms for a data key sealed with an ACL, store
    /// the wrapped key in the volume, print the key id (never the key).
    Create(create::CreateArgs),
    /// Serve a volume over vhost-user-blk until SIGTERM/SIGINT.
    Serve(serve::ServeArgs),
    /// Show a volume's geometry, keys (ids only) and log statistics.
    Inspect(inspect::InspectArgs),
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Create(args) => create::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Inspect(args) => inspect::run(args),
    };
    if let Err(error) = result {
        eprintln!("lsvblk: error: {:#}", error.error);
        std::process::exit(error.code);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

//! What both binaries do before their command runs: protect the process
//! (umask 077, no core dumps), parse the command line with usage errors
//! exiting 64, and log to stderr as `RUST_LOG` says.

use crate::crypto::hygiene::protect_process_unless_flagged;

/// sysexits(3) EX_USAGE: what a bad command line exits with (clap's own
/// default is 2).
pub const USAGE_EXIT_CODE: i32 = 64;

/// The options every command of both binaries takes.
#[derive(clap::Args, Debug)]
pub struct ProcessArgs {
    /// Keep the process dumpable (core files, ptrace): for debugging and
    /// tests only. Without it the process writes no core dump.
    #[arg(long, global = true, hide = true)]
    pub allow_core_dumps: bool,
}

/// The first thing a binary's `main` does: files and sockets it creates are
/// its own unless it says otherwise (explicit modes where others need
/// access), so an inherited umask of 000 cannot make segments, checkpoints
/// or sockets world-writable; then, before anything else, no core dumps
/// (see [`protect_process_unless_flagged`]), so that no key ever lives in a
/// dumpable process.
pub fn protect_process() -> std::io::Result<()> {
    // SAFETY: umask(2) only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    protect_process_unless_flagged()
}

/// Parses the command line: a usage error exits [`USAGE_EXIT_CODE`],
/// `--help` and `--version` exit 0.
pub fn parse_args<P: clap::Parser>() -> P {
    P::try_parse().unwrap_or_else(|error| {
        let code = if error.use_stderr() {
            USAGE_EXIT_CODE
        } else {
            0
        };
        let _ = error.print();
        std::process::exit(code);
    })
}

/// Logs to stderr, filtered by `RUST_LOG`, or by `default_filter` when it
/// is unset or does not parse.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ProcessArgs;
    use crate::crypto::hygiene::ALLOW_CORE_DUMPS_FLAG;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        process: ProcessArgs,
    }

    #[test]
    fn the_flag_the_hygiene_scan_looks_for_is_the_one_clap_accepts() {
        let cli = Cli::try_parse_from(["prog", ALLOW_CORE_DUMPS_FLAG]).unwrap();
        assert!(cli.process.allow_core_dumps);
        assert!(
            !Cli::try_parse_from(["prog"])
                .unwrap()
                .process
                .allow_core_dumps
        );
    }
}

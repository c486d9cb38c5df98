//! What both binaries do before their command runs: protect the process
//! (umask 077, no core dumps), parse the command line with usage errors
//! exiting 64, and log to stderr as `RUST_LOG` says.

use clap::{CommandFactory, FromArgMatches, Subcommand};

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

/// A binary's name and the text its `--help` starts with.
pub struct Program {
    /// The binary's name, as `--help`, `--version` and the man pages show it.
    pub name: &'static str,
    /// One line, without a final period: what the program is (`-h`).
    pub about: &'static str,
    /// The longer description `--help` shows, when there is more to say.
    pub long_about: Option<&'static str>,
}

/// A binary's whole command line: its subcommands `C` and the options
/// every command takes. Both binaries share it; each names itself with a
/// [`Program`].
#[derive(clap::Parser, Debug)]
#[command(version, propagate_version = true)]
pub struct CommandLine<C: Subcommand> {
    /// The command to run.
    #[command(subcommand)]
    pub command: C,
    /// Options of the process itself.
    #[command(flatten)]
    pub process: ProcessArgs,
}

impl<C: Subcommand> CommandLine<C> {
    /// The clap command of `program`: what completions and man pages are
    /// generated from, and what [`Self::parse_for`] parses with.
    pub fn command_for(program: &Program) -> clap::Command {
        <Self as CommandFactory>::command()
            .name(program.name)
            .bin_name(program.name)
            .about(program.about)
            .long_about(program.long_about)
    }

    /// Parses the process's arguments: a usage error exits
    /// [`USAGE_EXIT_CODE`], `--help` and `--version` exit 0.
    pub fn parse_for(program: &Program) -> Self {
        Self::command_for(program)
            .try_get_matches()
            .and_then(|matches| Self::from_arg_matches(&matches))
            .unwrap_or_else(|error| exit_on_usage_error(error))
    }
}

/// Prints a clap error (or the help/version text it carries) and exits:
/// [`USAGE_EXIT_CODE`] for a real error, 0 for `--help`/`--version`.
fn exit_on_usage_error(error: clap::Error) -> ! {
    let code = if error.use_stderr() {
        USAGE_EXIT_CODE
    } else {
        0
    };
    let _ = error.print();
    std::process::exit(code);
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
    use clap::{FromArgMatches, Subcommand};

    use super::{CommandLine, Program};
    use crate::crypto::hygiene::ALLOW_CORE_DUMPS_FLAG;

    #[derive(Subcommand, Debug, PartialEq)]
    enum Command {
        /// Does nothing.
        Idle,
    }

    const PROGRAM: Program = Program {
        name: "prog",
        about: "A test program",
        long_about: Some("A test program, described at length."),
    };

    fn parse(args: &[&str]) -> Result<CommandLine<Command>, clap::Error> {
        let matches = CommandLine::<Command>::command_for(&PROGRAM).try_get_matches_from(args)?;
        CommandLine::from_arg_matches(&matches)
    }

    #[test]
    fn the_flag_the_hygiene_scan_looks_for_is_the_one_clap_accepts() {
        let cli = parse(&["prog", "idle", ALLOW_CORE_DUMPS_FLAG]).unwrap();
        assert!(cli.process.allow_core_dumps);
        assert_eq!(cli.command, Command::Idle);
        assert!(!parse(&["prog", "idle"]).unwrap().process.allow_core_dumps);
    }

    #[test]
    fn the_program_names_the_command_line_and_its_help() {
        let command = CommandLine::<Command>::command_for(&PROGRAM);
        assert_eq!(command.get_name(), "prog");
        let help = command.clone().render_long_help().to_string();
        assert!(help.contains("described at length"), "{help}");
        let version = parse(&["prog", "--version"]).unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(version.to_string().starts_with("prog "), "{version}");
        let missing = parse(&["prog"]).unwrap_err();
        assert!(missing.use_stderr());
    }
}

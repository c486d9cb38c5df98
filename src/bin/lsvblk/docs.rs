//! `lsvblk completions SHELL` and `lsvblk man DIR`: made from the clap
//! definition of this binary (see `lsvblk::ops::docs`).

use std::path::PathBuf;

use lsvblk::ops::docs::{Shell, write_completions, write_man_pages};

use crate::exit::{Failure, Outcome};

/// Arguments of `lsvblk completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for (bash, zsh, fish, elvish, powershell).
    shell: Shell,
}

/// Arguments of `lsvblk man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing), e.g.
    /// /usr/local/share/man/man1.
    dir: PathBuf,
}

/// Prints the completion script for the shell to stdout.
pub fn completions(args: CompletionsArgs, command: clap::Command) -> Outcome {
    write_completions(args.shell, command, &mut std::io::stdout().lock());
    Ok(())
}

/// Writes `lsvblk.1` and one page per subcommand; prints each path.
pub fn man(args: ManArgs, command: clap::Command) -> Outcome {
    let pages = write_man_pages(command, &args.dir)
        .map_err(|e| Failure::io(format!("writing man pages to {}: {e}", args.dir.display())))?;
    for page in pages {
        println!("{}", page.display());
    }
    Ok(())
}

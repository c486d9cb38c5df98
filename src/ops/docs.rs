//! Shell completions (`clap_complete`) and manual pages (`clap_mangen`)
//! generated from a binary's clap definition, so that they never drift from
//! the options the binary really takes.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writes the completion script of `command` for `shell` to `out`.
pub fn write_completions(shell: Shell, mut command: clap::Command, out: &mut dyn Write) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, out);
}

/// Writes one manual page (section 1) for `command` and one for each of its
/// visible subcommands (`lsvblk-snapshot-create.1`, ...) into `dir`, which
/// is created if missing; returns the pages written, sorted.
pub fn write_man_pages(command: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // Building names every subcommand after its parents (`lsvblk-snapshot`),
    // which is what its page is called and what its synopsis shows.
    let mut command = command.disable_help_subcommand(true);
    command.build();
    // Every page's footer names the program and its version.
    let source = format!(
        "{} {}",
        command.get_name(),
        command.get_version().unwrap_or_default()
    );
    let mut pages = Vec::new();
    write_page_and_subpages(&command, &source, dir, &mut pages)?;
    pages.sort();
    Ok(pages)
}

fn write_page_and_subpages(
    command: &clap::Command,
    source: &str,
    dir: &Path,
    pages: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page_and_subpages(sub, source, dir, pages)?;
    }
    let page = clap_mangen::Man::new(command.clone()).source(source.to_owned());
    pages.push(page.generate_to(dir)?);
    Ok(())
}

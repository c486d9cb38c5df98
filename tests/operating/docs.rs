//! `lsvblk|lsvkms completions SHELL`, `lsvblk|lsvkms man DIR` and
//! `packaging/install.sh`.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::kit::cli::{LSVBLK, run_to_success};
use super::kit::dirs::fast_tempdir;
use super::kit::kms::LSVKMS;
use super::{have, repo, stdout_of};

/// Both binaries, with a subcommand and an option of each that completion
/// and man pages must know.
const BINARIES: [(&str, &str, &str); 2] = [
    (LSVBLK, "snapshot", "--token-file"),
    (LSVKMS, "token", "--client-ca"),
];

fn name_of(program: &str) -> &str {
    Path::new(program).file_name().unwrap().to_str().unwrap()
}

#[test]
fn completion_scripts_are_generated_for_bash_zsh_and_fish_and_parse() {
    let tmp = fast_tempdir();
    for (program, subcommand, _) in BINARIES {
        let name = name_of(program);
        for shell in ["bash", "zsh", "fish"] {
            let script = stdout_of(program, &["completions", shell]);
            assert!(
                script.contains(subcommand),
                "{name} {shell}: no {subcommand}"
            );
            let path = tmp.path().join(format!("{name}.{shell}"));
            fs::write(&path, &script).unwrap();
            let path = path.to_str().unwrap();
            match shell {
                "bash" => stdout_of("bash", &["-n", path]),
                "zsh" => {
                    assert!(script.starts_with(&format!("#compdef {name}")), "{script}");
                    if have("zsh") {
                        stdout_of("zsh", &["-n", path]);
                    }
                    String::new()
                }
                _ => {
                    assert!(script.contains(&format!("complete -c {name}")), "{script}");
                    if have("fish") {
                        stdout_of("fish", &["-n", path]);
                    }
                    String::new()
                }
            };
        }
    }
}

/// Sources the bash script and asks its completion function what it offers
/// after `words` (the last one being completed).
fn bash_completes(program: &str, words: &str) -> Vec<String> {
    let name = name_of(program);
    let script = format!(
        "source <({program} completions bash)\n\
         COMP_WORDS=({name} {words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         _{name} {name} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let out = stdout_of("bash", &["-c", &script]);
    out.lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_subcommands_and_options_of_both_binaries() {
    let offered = bash_completes(LSVBLK, "sn");
    assert_eq!(offered, ["snapshot"]);
    let offered = bash_completes(LSVBLK, "serve --tok");
    assert_eq!(offered, ["--token-file"]);
    let offered = bash_completes(LSVKMS, "serve --client");
    assert_eq!(offered, ["--client-ca"]);
    let offered = bash_completes(LSVBLK, "completions f");
    assert_eq!(offered, ["fish"]);
}

/// Renders a man page with groff and returns the text; panics on any
/// warning (`-ww`: all of them).
fn render(page: &Path) -> String {
    let output = Command::new("groff")
        // As man(1) does: UTF-8 input through preconv (-k); plain text out,
        // no overstriking for bold and underline.
        .args(["-k", "-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(page)
        .output()
        .expect("groff (groff-base) is installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{}: {stderr}",
        page.display()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn man_pages_are_written_for_every_subcommand_and_render() {
    let tmp = fast_tempdir();
    for (program, subcommand, option) in BINARIES {
        let name = name_of(program);
        let dir = tmp.path().join(name);
        let listed = stdout_of(program, &["man", dir.to_str().unwrap()]);
        let mut pages: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        assert_eq!(listed.lines().count(), pages.len(), "{listed}");
        assert!(pages.contains(&format!("{name}.1")), "{pages:?}");
        assert!(
            pages.contains(&format!("{name}-{subcommand}.1")),
            "{pages:?}"
        );
        assert!(pages.contains(&format!("{name}-serve.1")), "{pages:?}");
        assert!(!pages.iter().any(|p| p.contains("help")), "{pages:?}");
        for page in &pages {
            let text = render(&dir.join(page));
            assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{page}");
        }
        let serve = render(&dir.join(format!("{name}-serve.1")));
        // groff may hyphenate with U+2010; compare on plain hyphens.
        let serve = serve.replace(['\u{2010}', '\u{2212}'], "-");
        assert!(
            serve.contains(option),
            "{name}-serve.1 lacks {option}:\n{serve}"
        );
    }
    // Nested subcommands get their own pages.
    assert!(tmp.path().join("lsvblk/lsvblk-snapshot-create.1").is_file());
    assert!(tmp.path().join("lsvkms/lsvkms-token-issue.1").is_file());
}

#[test]
fn install_script_puts_binaries_pages_completions_and_units_in_place() {
    let tmp = fast_tempdir();
    let root = tmp.path();
    let bin_dir = Path::new(LSVBLK).parent().unwrap();
    run_to_success(
        Command::new(repo().join("packaging/install.sh"))
            .arg("--no-build")
            .env("PREFIX", root.join("usr"))
            .env("UNITDIR", root.join("units"))
            .env("SYSCONFDIR", root.join("etc"))
            .env("BIN_DIR", bin_dir),
    );
    for file in [
        "usr/bin/lsvblk",
        "usr/bin/lsvkms",
        "usr/share/man/man1/lsvblk-serve.1",
        "usr/share/man/man1/lsvkms-serve.1",
        "usr/share/bash-completion/completions/lsvblk",
        "usr/share/zsh/site-functions/_lsvkms",
        "usr/share/fish/vendor_completions.d/lsvblk.fish",
        "units/lsvkms.service",
        "units/lsvblk@.service",
        "etc/lsvblk/example.conf",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
    let unit = fs::read_to_string(root.join("units/lsvblk@.service")).unwrap();
    let exec = format!("ExecStart={}/usr/bin/lsvblk serve", root.display());
    assert!(unit.contains(&exec), "{unit}");
    super::service::verify_units(&root.join("units"));
}

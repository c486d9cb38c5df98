//! The daemons a benchmark runs: this target's own build of them for a smoke
//! run, a release build for a real one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The benchmark (the bench target), for messages.
const BENCH: &str = env!("CARGO_CRATE_NAME");

/// Where the daemons' executables are.
pub struct Binaries {
    /// `lsvblk`.
    pub lsvblk: PathBuf,
    /// `lsvkms`.
    pub lsvkms: PathBuf,
}

impl Binaries {
    /// The `lsvblk` and `lsvkms` cargo built with this bench target (under
    /// `cargo test`, the test build; under `ci/bench.sh`, the bench
    /// profile).
    pub fn of_this_target() -> Self {
        Binaries {
            lsvblk: PathBuf::from(env!("CARGO_BIN_EXE_lsvblk")),
            lsvkms: PathBuf::from(env!("CARGO_BIN_EXE_lsvkms")),
        }
    }

    /// `cargo build --profile bench --bin lsvblk --bin lsvkms ARGS`
    /// (release settings, cached after the first time), then copies both
    /// executables into `into`: the next build (other features) replaces
    /// them in `target/`.
    pub fn build(args: &[&str], into: &Path) -> Self {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("{BENCH} bench: building lsvblk and lsvkms (bench profile) {args:?}");
        let output = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--profile", "bench"])
            .args(["--bin", "lsvblk", "--bin", "lsvkms"])
            .args(["--message-format", "json-render-diagnostics"])
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(output.status.success(), "cargo build {args:?} failed");
        std::fs::create_dir_all(into).expect("bin dir");
        let mut found = 0;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let name = message["target"]["name"].as_str().unwrap_or("");
            if let Some(exe) = message["executable"].as_str()
                && (name == "lsvblk" || name == "lsvkms")
            {
                std::fs::copy(exe, into.join(name)).expect("copy executable");
                found += 1;
            }
        }
        assert_eq!(
            found, 2,
            "cargo build {args:?} reported {found} of 2 executables"
        );
        Binaries {
            lsvblk: into.join("lsvblk"),
            lsvkms: into.join("lsvkms"),
        }
    }
}

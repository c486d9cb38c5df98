//! The wrapping service end to end, PKCS#11 backend: the same flow as `kms_flow.rs`
//! with the wrapping key generated inside SoftHSM2 (a private token store
//! in a temporary directory), plus a check that the HSM refuses to reveal
//! the wrapping key's value.
//!
//! Needs Debian's `softhsm2` package. Without it the test fails when `CI`
//! is set, and otherwise skips with a notice.

mod kit;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use kit::kms::Kms;
use kit::kms_acceptance::acceptance_flow;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "lsvkms-test";
const PIN: &str = "1234-test";

/// A private SoftHSM2 token store; `None` (after a notice) if SoftHSM2 is
/// missing outside CI.
fn softhsm(dir: &Path) -> Option<PathBuf> {
    if !Path::new(MODULE).exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "SoftHSM2 is missing ({MODULE}): `apt-get install softhsm2` (CI must install it)"
            );
        }
        eprintln!("NOTICE: SoftHSM2 not installed ({MODULE}); skipping the PKCS#11 test");
        return None;
    }
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            PIN,
            "--so-pin",
            "5678-so",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util runs");
    assert!(
        out.status.success(),
        "init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(conf)
}

#[test]
fn acceptance_flow_with_the_pkcs11_backend_on_softhsm2() {
    let hsm_dir = tempfile::tempdir().unwrap();
    let Some(conf) = softhsm(hsm_dir.path()) else {
        return;
    };
    let pin_file = hsm_dir.path().join("pin");
    fs::write(&pin_file, PIN).unwrap();
    fs::set_permissions(&pin_file, fs::Permissions::from_mode(0o600)).unwrap();
    let env = vec![("SOFTHSM2_CONF".to_owned(), conf.display().to_string())];
    let args = [
        "--kek",
        "pkcs11",
        "--pkcs11-module",
        MODULE,
        "--pkcs11-token",
        TOKEN,
        "--pkcs11-pin-file",
        pin_file.to_str().unwrap(),
    ];
    let mut kms = Kms::init(&args, env);
    assert!(
        !kms.state_dir().join("kek").exists(),
        "no wrapping key file with the HSM backend"
    );
    kms.serve();
    assert_eq!(
        kms.client().health().unwrap().wrapping_key.unwrap().backend,
        "pkcs11"
    );
    acceptance_flow(&mut kms);
    kms.stop();
    assert_wrapping_keys_never_leave_the_hsm(&conf);
}

/// Both wrapping-key versions exist in the token, sensitive and not
/// extractable: the HSM refuses to tell their value.
fn assert_wrapping_keys_never_leave_the_hsm(conf: &Path) {
    // SAFETY: this test binary has no other thread reading the environment
    // now (it holds one test); the module reads SOFTHSM2_CONF at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
    let context = Pkcs11::new(MODULE).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = context.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_owned())))
        .unwrap();
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 2, "versions 1 and 2 (rotated by the flow)");
    for key in keys {
        let info = session
            .get_attribute_info(key, &[AttributeType::Value])
            .unwrap();
        assert!(
            matches!(info.as_slice(), [AttributeInfo::Sensitive]),
            "the key value is not readable"
        );
        let flags = session
            .get_attributes(key, &[AttributeType::Extractable, AttributeType::Sensitive])
            .unwrap();
        assert!(flags.contains(&Attribute::Extractable(false)));
        assert!(flags.contains(&Attribute::Sensitive(true)));
    }
}

//! `lsvkms`: the key-wrapping service of lsvblk, and its admin commands.
//!
//! A thin CLI: parse, call `lsvblk::kms`, print. See README.md, "The key-wrapping service".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use lsvblk::kms::audit::verify::{check, verify};
use lsvblk::kms::audit::{AuditKey, rfc3339_utc};
use lsvblk::kms::auth::token::{TokenSigner, parse_ttl};
use lsvblk::kms::client::KmsClient;
use lsvblk::kms::config::{self, Config, KekConfig, files};
use lsvblk::kms::fsutil::effective_uid;
use lsvblk::kms::kek::pkcs11::Pkcs11Config;
use lsvblk::kms::keys::KeyStore;
use lsvblk::kms::limits::TOKEN_TTL_S_MAX;
use lsvblk::kms::service::{Service, now_unix_s};
use lsvblk::kms::{server, tls};
use lsvblk::ops::cli::{CommandLine, Program};
use lsvblk::ops::docs::{Shell, write_completions, write_man_pages};
use lsvblk::ops::metrics::{self, KmsCollector, MetricsAddress};
use lsvblk::ops::notify;
use prometheus_client::registry::Registry;

/// How `lsvkms` names itself in `--help`, `--version` and its man pages.
const PROGRAM: Program = Program {
    name: "lsvkms",
    about: "lsvkms: holds the wrapping key, creates and wraps data keys, and releases a data \
key only to an allow-listed service acting for a user on its ACL",
    long_about: None,
};

#[derive(Subcommand)]
enum Command {
    /// Create a state directory: wrapping key (version 1), token-signing key,
    /// audit key and config.json.
    Init(InitArgs),
    /// Serve the HTTP+JSON API on the UNIX socket (and optionally TLS on TCP).
    Serve(ServeArgs),
    /// User tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// TLS helpers.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print the shell completion script (bash, zsh, fish, ...) to stdout.
    Completions {
        /// The shell to complete for (bash, zsh, fish, elvish, powershell).
        shell: Shell,
    },
    /// Write the manual pages (lsvkms.1 and one per subcommand) to DIR.
    Man {
        /// Directory to write the pages to (created if missing).
        dir: PathBuf,
    },
    /// What a user may see of the keys whose ACL lists them.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Leases lent to services (`lsvblk serve --lease`).
    #[command(subcommand)]
    Lease(LeaseCommand),
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// End a lease at once: the service it was lent to needs the user's
    /// token again. Audited (`lease_revoke`).
    Revoke {
        /// The service's UNIX socket.
        #[arg(long)]
        socket: PathBuf,
        /// The lease id (from the audit log, or VOLUME/lease.json).
        lease_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List, with the user's own token, every key whose ACL lists them: key
    /// id, state, volume and snapshot, ACL, creation, last state change and
    /// rotation links. Never key material. Audited (`key_list`).
    List {
        /// The service's UNIX socket.
        #[arg(long)]
        socket: PathBuf,
        /// File holding the user's token; must not be readable by group or
        /// others.
        #[arg(long)]
        token_file: PathBuf,
        /// Print the service's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Print the SHA-256 fingerprint of a client certificate (PEM), the value
    /// to put in tls_services[].cert_sha256 of config.json.
    Fingerprint {
        /// The certificate (PEM; the first one is used).
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Args)]
struct DirArg {
    /// The state directory (`lsvkms init --dir`).
    #[arg(long, env = "LSVKMS_DIR")]
    dir: PathBuf,
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Wrapping-key backend: `file` (key files in DIR/kek, 0600) or `pkcs11`.
    #[arg(long, default_value = "file")]
    kek: String,
    /// PKCS#11 module (with --kek pkcs11), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long)]
    pkcs11_module: Option<PathBuf>,
    /// PKCS#11 token label (with --kek pkcs11).
    #[arg(long)]
    pkcs11_token: Option<String>,
    /// File holding the token's user PIN, mode 0600 (with --kek pkcs11).
    #[arg(long)]
    pkcs11_pin_file: Option<PathBuf>,
    /// Uid allowed to call over the UNIX socket (repeatable; default: ours).
    #[arg(long = "service-uid")]
    service_uids: Vec<u32>,
    /// The `iss` of the tokens this service signs (default: `lsvkms@HOSTNAME`).
    #[arg(long)]
    issuer: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    dir: DirArg,
    /// UNIX socket to serve on (default: socket_path in config.json).
    #[arg(long, env = "LSVKMS_SOCKET")]
    socket: Option<PathBuf>,
    /// Also serve TLS 1.3 on this TCP address (e.g. 127.0.0.1:8443); needs
    /// --tls-cert, --tls-key and --client-ca. Callers must present a client
    /// certificate whose fingerprint is in tls_services (config.json).
    #[arg(long, env = "LSVKMS_TCP", requires_all = ["tls_cert", "tls_key", "client_ca"])]
    tcp: Option<String>,
    /// Server certificate chain (PEM).
    #[arg(long, env = "LSVKMS_TLS_CERT", requires = "tcp")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "LSVKMS_TLS_KEY", requires = "tcp")]
    tls_key: Option<PathBuf>,
    /// CA certificate(s) that sign client certificates (PEM).
    #[arg(long, env = "LSVKMS_CLIENT_CA", requires = "tcp")]
    client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on ADDR: HOST:PORT (e.g.
    /// 127.0.0.1:9651) or a UNIX socket path. Off by default.
    #[arg(long, env = "LSVKMS_METRICS", value_name = "ADDR")]
    metrics: Option<MetricsAddress>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a token for USER, signed with this service's key, valid for TTL.
    Issue {
        #[command(flatten)]
        dir: DirArg,
        /// The user name (matched against key ACLs).
        #[arg(long)]
        user: String,
        /// Lifetime: 90s, 15m, 1h, 7d (at most 30d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every line's hash, the chain and the head file; exit 1 if broken.
    Verify {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Report every unwrap by a user not on the key's ACL and mark those keys
    /// compromised; exit 2 if any was found.
    Check {
        #[command(flatten)]
        dir: DirArg,
    },
}

/// Why lsvkms failed, where the kind decides the exit code; any other
/// error is a plain failure (exit 1). See [`exit_code`].
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Bad arguments (sysexits EX_USAGE).
    #[error("{0}")]
    Usage(String),
    /// `audit verify` found the log broken.
    #[error("audit log BROKEN: {0}")]
    AuditBroken(String),
    /// `audit check` found unwraps by users not on the key's ACL.
    #[error("audit check: {0} finding(s)")]
    AuditFindings(usize),
}

/// The exit code of a failed command: README.md "Exit codes", lsvkms.
fn exit_code(error: &anyhow::Error) -> i32 {
    match error.downcast_ref::<Failure>() {
        Some(Failure::Usage(_)) => 64,
        Some(Failure::AuditFindings(_)) => 2,
        Some(Failure::AuditBroken(_)) | None => 1,
    }
}

fn main() {
    if let Err(error) = run() {
        eprintln!("lsvkms: error: {error:#}");
        std::process::exit(exit_code(&error));
    }
}

fn run() -> Result<()> {
    lsvblk::ops::cli::protect_process().context("cannot disable core dumps")?;
    // RUST_LOG unset: errors only.
    lsvblk::ops::cli::init_logging("error");
    match CommandLine::<Command>::parse_for(&PROGRAM).command {
        Command::Init(args) => init(args),
        Command::Serve(args) => serve(args),
        Command::Token(TokenCommand::Issue { dir, user, ttl }) => issue(&dir.dir, &user, &ttl),
        Command::Audit(AuditCommand::Verify { dir }) => audit_verify(&dir.dir),
        Command::Audit(AuditCommand::Check { dir }) => audit_check(&dir.dir),
        Command::Keys(KeysCommand::List {
            socket,
            token_file,
            json,
        }) => keys_list(&socket, &token_file, json),
        Command::Lease(LeaseCommand::Revoke { socket, lease_id }) => {
            let lease = KmsClient::new(&socket).revoke_lease(&lease_id)?;
            println!("{}", serde_json::to_string(&lease)?);
            Ok(())
        }
        Command::Tls(TlsCommand::Fingerprint { cert }) => {
            let certs = tls::load_certs(&cert)?;
            println!("{}", tls::fingerprint(&certs[0]));
            Ok(())
        }
        Command::Completions { shell } => {
            write_completions(
                shell,
                CommandLine::<Command>::command_for(&PROGRAM),
                &mut std::io::stdout().lock(),
            );
            Ok(())
        }
        Command::Man { dir } => {
            let pages = write_man_pages(CommandLine::<Command>::command_for(&PROGRAM), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            for page in pages {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

fn init(args: InitArgs) -> Result<()> {
    let kek = match args.kek.as_str() {
        "file" => KekConfig::File,
        "pkcs11" => KekConfig::Pkcs11(Pkcs11Config {
            module: args
                .pkcs11_module
                .ok_or_else(|| Failure::Usage("--kek pkcs11 needs --pkcs11-module".into()))?,
            token_label: args
                .pkcs11_token
                .ok_or_else(|| Failure::Usage("--kek pkcs11 needs --pkcs11-token".into()))?,
            pin_file: args
                .pkcs11_pin_file
                .ok_or_else(|| Failure::Usage("--kek pkcs11 needs --pkcs11-pin-file".into()))?,
            key_label_prefix: "lsvkms-kek-v".into(),
        }),
        other => bail!(Failure::Usage(format!(
            "unknown --kek {other:?} (file or pkcs11)"
        ))),
    };
    let uids = if args.service_uids.is_empty() {
        vec![effective_uid()]
    } else {
        args.service_uids
    };
    let issuer = args.issuer.unwrap_or_else(default_issuer);
    let config = Config::default_for(kek, &uids, issuer);
    config::init(&args.dir.dir, &config)
        .with_context(|| format!("initialising {}", args.dir.dir.display()))?;
    println!(
        "initialised {} (wrapping key version 1, {:?} backend)",
        args.dir.dir.display(),
        args.kek
    );
    Ok(())
}

fn default_issuer() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("lsvkms@{}", host.trim())
}

fn serve(args: ServeArgs) -> Result<()> {
    let dir = args.dir.dir.clone();
    let config = Config::load(&dir)?;
    let signals = block_termination_signals()?;
    let service = Arc::new(Service::open(&dir, &config).context("opening the service")?);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| Config::resolve(&dir, &config.socket_path));
    let listener = server::bind_unix(&socket, config.socket_mode_bits()?)
        .with_context(|| format!("binding {}", socket.display()))?;
    if let Some(address) = &args.tcp {
        serve_tls(address, &args, &service)?;
    }
    if let Some(address) = &args.metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(KmsCollector::new(&service)));
        metrics::serve(address, registry).with_context(|| format!("--metrics {address:?}"))?;
    }
    tracing::info!(socket = %socket.display(), "lsvkms serving");
    let accepting = Arc::clone(&service);
    std::thread::Builder::new()
        .name("kms-accept".into())
        .spawn(move || server::serve_unix(listener, accepting))?;
    // Every listener is bound and listening: callers can connect.
    notify::ready(&format!("serving on {}", socket.display()));
    let signal = wait_for(&signals);
    notify::stopping();
    tracing::info!(signal, "stopping");
    service.shutdown();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn serve_tls(address: &str, args: &ServeArgs, service: &Arc<Service>) -> Result<()> {
    let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.client_ca) else {
        bail!(Failure::Usage(
            "--tcp needs --tls-cert, --tls-key and --client-ca".into()
        ));
    };
    let config = tls::server_config(cert, key, ca)?;
    let listener =
        std::net::TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "lsvkms serving TLS");
    let service = Arc::clone(service);
    std::thread::Builder::new()
        .name("kms-accept-tls".into())
        .spawn(move || tls::serve_tcp(listener, config, service))?;
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread it starts
/// later), so [`wait_for`] can take them synchronously.
fn block_termination_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("pthread_sigmask failed");
        }
        Ok(set)
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was initialised by block_termination_signals and its
    // signals are blocked in every thread, so sigwait receives them.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

fn issue(dir: &Path, user: &str, ttl: &str) -> Result<()> {
    let ttl_s = parse_ttl(ttl).map_err(Failure::Usage)?;
    if ttl_s > TOKEN_TTL_S_MAX {
        bail!(Failure::Usage(format!(
            "--ttl {ttl} is longer than 30 days"
        )));
    }
    let config = Config::load(dir)?;
    let signer = TokenSigner::load(config.issuer.clone(), &dir.join(files::TOKEN_KEY))?;
    println!("{}", signer.issue(user, now_unix_s(), ttl_s)?);
    Ok(())
}

fn audit_paths(dir: &Path) -> Result<(PathBuf, AuditKey)> {
    let config = Config::load(dir)?;
    let key = AuditKey::load(&dir.join(files::AUDIT_KEY)).context("audit key")?;
    Ok((Config::resolve(dir, &config.audit_path), key))
}

fn audit_verify(dir: &Path) -> Result<()> {
    let (path, key) = audit_paths(dir)?;
    match verify(&path, &key) {
        Ok(report) => {
            println!(
                "audit log intact: {} records, head {}",
                report.records,
                if report.head_checked {
                    "checked"
                } else {
                    "absent"
                }
            );
            Ok(())
        }
        Err(error) => Err(Failure::AuditBroken(error.to_string()).into()),
    }
}

fn audit_check(dir: &Path) -> Result<()> {
    let (path, _key) = audit_paths(dir)?;
    let keys = KeyStore::open(dir)?;
    let report = check(&path, &keys)?;
    for finding in &report.findings {
        println!(
            "line {} seq {}: key {} unwrapped by {:?} via {}: {}",
            finding.line,
            finding.seq,
            finding.key_id,
            finding.user,
            finding.service,
            finding.reason
        );
    }
    for key_id in &report.compromised {
        println!("key {key_id} marked COMPROMISED");
    }
    println!("{}", serde_json::to_string(&report)?);
    if !report.findings.is_empty() {
        bail!(Failure::AuditFindings(report.findings.len()));
    }
    Ok(())
}

/// A user's token from `path`, refused if group or others may read it.
fn read_token(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    lsvblk::kms::fsutil::check_private(path).context("--token-file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
}

fn keys_list(socket: &Path, token_file: &Path, json: bool) -> Result<()> {
    let token = read_token(token_file)?;
    let mine = KmsClient::new(socket).my_keys(&token)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&mine)?);
        return Ok(());
    }
    let time =
        |s: Option<u64>| s.map_or("-".to_owned(), |s| rfc3339_utc(s * 1000)[..19].to_owned());
    println!(
        "{:<32}  {:<11}  {:<32}  {:<10}  {:<19}  {:<19}  {:<32}  ACL",
        "KEY ID", "STATUS", "VOLUME", "SNAPSHOT", "CREATED", "STATE CHANGED", "REPLACED BY"
    );
    for key in &mine.keys {
        let context = key.context.clone().unwrap_or_default();
        println!(
            "{:<32}  {:<11}  {:<32}  {:<10}  {:<19}  {:<19}  {:<32}  {}",
            key.key_id.to_string(),
            key.status,
            context.volume_id,
            if context.snapshot_id.is_empty() {
                "-"
            } else {
                &context.snapshot_id
            },
            time(Some(key.created_unix_s)),
            time(key.history.state_changed_unix_s),
            key.history
                .replaced_by
                .map_or("-".to_owned(), |id| id.to_string()),
            key.acl.join(",")
        );
    }
    if mine.truncated {
        eprintln!("lsvkms: more keys than one answer lists; the oldest are shown");
    }
    Ok(())
}

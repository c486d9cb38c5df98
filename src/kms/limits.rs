//! Every bound of the key-wrapping service, each with its unit and reason.
//!
//! Kept next to the service (not in `crate::limits`) so the service can be
//! read and changed as one unit; nothing here is sized from a length a peer
//! chose.

/// Largest HTTP request or response head (request line + headers), bytes.
/// Our requests carry a handful of short headers; curl's are ~100 bytes.
pub const HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Most headers in one HTTP message.
pub const HTTP_HEADERS_MAX: usize = 32;

/// Largest HTTP body, bytes. The biggest request is an unwrap: a blob
/// (≤ [`BLOB_BYTES_MAX`], ×4/3 for base64) plus a token and a context.
pub const HTTP_BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest response body the client accepts, bytes (an audit query with
/// [`AUDIT_QUERY_RECORDS_MAX`] lines is the biggest answer).
pub const HTTP_RESPONSE_BYTES_MAX: usize = AUDIT_QUERY_RECORDS_MAX * AUDIT_LINE_BYTES_MAX;

/// Requests served on one connection before the server closes it, so one
/// peer cannot hold a thread forever.
pub const HTTP_REQUESTS_PER_CONNECTION_MAX: u32 = 100_000;

/// Idle time a kept-alive connection may wait for its next request, ms.
pub const HTTP_IDLE_MS_MAX: u64 = 30_000;

/// Time from the first byte of a request to its last (head and body), and
/// for writing a whole response, ms. Our clients send a request in one
/// write; a peer that trickles it is cut off here, whatever the pace.
pub const HTTP_REQUEST_MS_MAX: u64 = 2_000;

/// Connections served at once; one more is answered 503 and closed.
/// Each costs one thread (stack 256 KiB). Peers that are not allow-listed
/// never take one: they are answered 403 and closed before a byte is read.
pub const CONNECTIONS_MAX: usize = 64;

/// Connections one peer (a UNIX uid, a TLS client's address) may hold at
/// once, so one principal cannot take every slot.
pub const CONNECTIONS_PER_PEER_MAX: usize = 16;

/// Refusals before any API call (stranger, busy, malformed, too large, too
/// slow) are audited as one record per peer and reason per window of this
/// many ms, with a count.
pub const REFUSAL_AUDIT_WINDOW_MS: u64 = 1_000;

/// Peers told apart in one refusal window; more are counted as `others`.
pub const REFUSAL_AUDIT_PEERS_MAX: usize = 256;

/// Entries in one ACL.
pub const ACL_ENTRIES_MAX: usize = 64;

/// Users a key remembers as removed from its ACL by ACL changes (older
/// blobs still carry them). With [`ACL_ENTRIES_MAX`] and
/// [`USER_BYTES_MAX`] this keeps a key record well under
/// [`STATE_FILE_BYTES_MAX`]; an ACL change past it is refused (409).
pub const FORMER_ACL_USERS_MAX: usize = 256;

/// Bytes in one user name (an ACL entry or a token's `sub`).
pub const USER_BYTES_MAX: usize = 128;

/// Bytes in a context id (volume id, snapshot id).
pub const CONTEXT_ID_BYTES_MAX: usize = 128;

/// Largest wrapped blob, bytes: the header, two context ids, the DEK, the
/// ACL and the tag, with room to spare (checked at compile time in `seal`).
pub const BLOB_BYTES_MAX: usize = 16 * 1024;

/// Largest user token, bytes (a JWT of three base64url parts).
pub const TOKEN_BYTES_MAX: usize = 4096;

/// Longest lifetime `lsvkms token issue` accepts, seconds (30 days).
pub const TOKEN_TTL_S_MAX: u64 = 30 * 24 * 3600;

/// Clock skew tolerated on a token's `iat` (issued in the future), seconds.
pub const TOKEN_IAT_SKEW_S_MAX: u64 = 60;

/// Verified tokens remembered (by hash) to skip re-verifying signatures;
/// the cache is emptied when full.
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 4096;

/// Largest audit line, bytes. Every field of a record is bounded above.
pub const AUDIT_LINE_BYTES_MAX: usize = 8 * 1024;

/// Records one audit write (one fdatasync) may carry: group commit batch.
pub const AUDIT_BATCH_MAX: usize = 256;

/// Longest the audit writer waits for more records to join a batch, µs.
/// Below one fdatasync here (~250-400 µs) and above a client's turn-around
/// (~100-150 µs), so callers in lockstep share one sync instead of taking
/// turns; a lone caller never waits.
pub const AUDIT_LINGER_US_MAX: u64 = 200;

/// The audit log grows ahead in chunks of this many bytes of padding, so
/// each record's fdatasync overwrites in place (no size change to journal).
pub const AUDIT_PREALLOC_BYTES: u64 = 1024 * 1024;

/// Most bytes of an unanswered (torn) audit tail that opening sets aside;
/// more is damage, not a crash: the service refuses to start.
pub const AUDIT_CUT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Records waiting for the audit writer; a full queue makes callers wait.
pub const AUDIT_QUEUE_MAX: usize = 1024;

/// Records one `GET /v1/audit` returns at most.
pub const AUDIT_QUERY_RECORDS_MAX: usize = 1000;

/// Keys one `POST /v1/keys/mine` lists at most (oldest first).
pub const MY_KEYS_MAX: usize = 1000;

/// Largest audit log `audit verify`/`check` and the query read, bytes (1 TiB:
/// a sanity bound, the walk streams line by line).
pub const AUDIT_LOG_BYTES_MAX: u64 = 1 << 40;

/// Wrapping-key versions; rotation past this is refused.
pub const KEK_VERSIONS_MAX: u32 = 100_000;

/// Largest state file we read (a key record, the config), bytes.
pub const STATE_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Default client connect/read/write timeout, ms.
pub const CLIENT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// PKCS#11 sessions the HSM backend keeps open (one per concurrent caller).
pub const PKCS11_SESSIONS: usize = 4;

const _: () = assert!(BLOB_BYTES_MAX * 4 / 3 + TOKEN_BYTES_MAX + 1024 < HTTP_BODY_BYTES_MAX);
const _: () = assert!(AUDIT_BATCH_MAX <= AUDIT_QUEUE_MAX);
const _: () = assert!(CONNECTIONS_PER_PEER_MAX * 2 <= CONNECTIONS_MAX);

//! From `object_store`'s errors to ours.
//!
//! `object_store` types the statuses it knows (404, 403, 401, 409, 412) and
//! reports the rest as `Generic`, whose source (a private type) carries the
//! HTTP status and the S3 error body only in its text. So: typed variants
//! first, then the transport error type (public) in the source chain, and
//! for the rest the status and the S3 `<Code>` read from the text. The
//! integration tests pin each of these against a real radosgw.

use std::error::Error as _;
use std::time::Duration;

use object_store::client::HttpError;

use crate::objstore::error::Error;

/// What an `object_store` error of `op` on `key` means for us.
pub(super) fn classify(
    op: &'static str,
    key: &str,
    bucket: &str,
    error: object_store::Error,
    elapsed: Duration,
) -> Error {
    let text = chain_text(&error);
    let code = s3_code(&text);
    let transient = || Error::Transient {
        op,
        key: key.to_string(),
        elapsed_s: elapsed.as_secs_f64(),
        detail: text.clone(),
    };
    // The status: from the typed variants, else from the text (a listing's
    // errors, for one, all arrive as `Generic`).
    let status = match error {
        object_store::Error::NotFound { .. } => Some(404),
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::Unauthenticated { .. } => Some(401),
        _ if is_transport_failure(&error) => return transient(),
        _ => http_status(&text),
    };
    match status {
        Some(404) if code == Some("NoSuchBucket") => Error::BucketMissing {
            bucket: bucket.to_string(),
        },
        Some(404) => Error::NotFound {
            key: key.to_string(),
        },
        Some(401 | 403) => Error::CredentialsRefused {
            // A HEAD answer has no body, so no code.
            detail: code.map_or_else(
                || format!("{op} {key}: HTTP {}", status.unwrap_or(403)),
                str::to_string,
            ),
        },
        Some(status) if status >= 500 || status == 429 || status == 408 => transient(),
        _ => Error::Permanent {
            op,
            key: key.to_string(),
            detail: text,
        },
    }
}

/// The HTTP status of a failed request, if the server answered.
pub(super) fn status_of(error: &object_store::Error) -> Option<u16> {
    http_status(&chain_text(error))
}

/// The connection failed, timed out or broke: the server's answer, if any,
/// never arrived. `object_store` retried it until the deadline.
fn is_transport_failure(error: &object_store::Error) -> bool {
    let mut source = error.source();
    while let Some(error) = source {
        if error.downcast_ref::<HttpError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The error and all its sources, as one line.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        let shown = error.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = error.source();
    }
    text
}

/// The status in `object_store`'s "...status code: 503 Service Unavailable...".
fn http_status(text: &str) -> Option<u16> {
    let after = text.split("status code: ").nth(1)?;
    after.get(..3)?.parse().ok()
}

/// The `<Code>` of an S3 XML error body (e.g. `NoSuchBucket`).
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let length = text[start..].find("</Code>")?;
    Some(&text[start..start + length])
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "Error performing GET http://127.0.0.1:7480/b/k in 3ms - Server returned \
        non-2xx status code: 416 Range Not Satisfiable: <?xml version=\"1.0\"?><Error>\
        <Code>InvalidRange</Code><BucketName>b</BucketName></Error>";

    #[test]
    fn reads_status_and_code_from_the_text() {
        assert_eq!(http_status(BODY), Some(416));
        assert_eq!(s3_code(BODY), Some("InvalidRange"));
        assert_eq!(http_status("connection refused"), None);
        assert_eq!(s3_code("<Code>unterminated"), None);
    }

    #[test]
    fn typed_errors_map_without_reading_text() {
        let source = || Box::<dyn std::error::Error + Send + Sync>::from("<Code>NoSuchKey</Code>");
        let not_found = object_store::Error::NotFound {
            path: "b/k".into(),
            source: source(),
        };
        let error = classify("GET", "k", "b", not_found, Duration::ZERO);
        assert!(matches!(error, Error::NotFound { .. }), "{error}");
        let missing_bucket = object_store::Error::NotFound {
            path: "b/k".into(),
            source: "<Code>NoSuchBucket</Code>".into(),
        };
        let error = classify("GET", "k", "b", missing_bucket, Duration::ZERO);
        assert!(matches!(error, Error::BucketMissing { .. }), "{error}");
        let denied = object_store::Error::PermissionDenied {
            path: "b/k".into(),
            source: "<Code>SignatureDoesNotMatch</Code>".into(),
        };
        let error = classify("GET", "k", "b", denied, Duration::ZERO);
        assert_eq!(
            error.to_string(),
            "the object store refused our credentials: SignatureDoesNotMatch"
        );
    }

    #[test]
    fn server_errors_are_transient_and_client_errors_permanent() {
        let generic = |text: &str| object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        };
        let busy = generic("Server returned non-2xx status code: 503 Service Unavailable: ");
        assert!(classify("PUT", "k", "b", busy, Duration::from_secs(60)).is_transient());
        let no_bucket = generic("status code: 404 Not Found: <Code>NoSuchBucket</Code>");
        let error = classify("LIST", "k", "b", no_bucket, Duration::ZERO);
        assert!(matches!(error, Error::BucketMissing { .. }), "{error}");
        let refused = generic("status code: 403 Forbidden: <Code>InvalidAccessKeyId</Code>");
        let error = classify("LIST", "k", "b", refused, Duration::ZERO);
        assert!(matches!(error, Error::CredentialsRefused { .. }), "{error}");
        let bad = generic(
            "Server returned non-2xx status code: 400 Bad Request: <Code>InvalidArgument</Code>",
        );
        let error = classify("PUT", "k", "b", bad, Duration::ZERO);
        assert!(matches!(error, Error::Permanent { .. }), "{error}");
    }
}

//! User tokens: minimal JWTs signed with EdDSA (Ed25519), RFC 7519/8037.
//!
//! `header.claims.signature`, each base64url without padding. The header
//! must say `"alg":"EdDSA"` (nothing else is accepted, so no algorithm
//! confusion); the claims must carry `iss`, `sub`, `iat` and `exp`. The
//! issuer picks the verifying key: our own (`lsvkms token issue`) or a
//! configured external issuer's public key. A token is valid when its
//! signature verifies (strict Ed25519), it has not expired, it was not
//! issued in the future, and `nbf` (if any) has passed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::kms::api::validate_user;
use crate::kms::error::KmsError;
use crate::kms::fsutil;
use crate::kms::limits::{TOKEN_BYTES_MAX, TOKEN_CACHE_ENTRIES_MAX, TOKEN_IAT_SKEW_S_MAX};

/// The only JOSE header we write and accept.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// The claims of a user token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: selects the verifying key.
    pub iss: String,
    /// Subject: the user name matched against ACLs.
    pub sub: String,
    /// Issued at, seconds since the UNIX epoch.
    pub iat: u64,
    /// Expires at, seconds since the UNIX epoch.
    pub exp: u64,
    /// Not before, seconds since the UNIX epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Signs tokens for one issuer name.
pub struct TokenSigner {
    issuer: String,
    key: SigningKey,
}

impl TokenSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn new(issuer: String, seed: &[u8; 32]) -> Self {
        Self {
            issuer,
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Loads the seed from a private (0600) file.
    pub fn load(issuer: String, path: &Path) -> Result<Self, KmsError> {
        fsutil::check_private(path).map_err(|e| KmsError::Internal(e.to_string()))?;
        let bytes = Zeroizing::new(
            fsutil::read_bounded(path, 32)
                .map_err(|e| KmsError::Internal(format!("{}: {e}", path.display())))?,
        );
        let seed: &[u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| KmsError::Internal(format!("{} is not 32 bytes", path.display())))?;
        Ok(Self::new(issuer, seed))
    }

    /// Creates a new random signing key file (0600) at `path`.
    pub fn generate_file(path: &Path) -> std::io::Result<()> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
        fsutil::write_new(path, &seed[..], 0o600)
    }

    /// The public key that verifies this signer's tokens.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The issuer name put in `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token for `user` valid from `now_unix_s` for `ttl_s` seconds.
    pub fn issue(&self, user: &str, now_unix_s: u64, ttl_s: u64) -> Result<String, KmsError> {
        validate_user(user)?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: user.to_owned(),
            iat: now_unix_s,
            exp: now_unix_s.saturating_add(ttl_s),
            nbf: None,
        };
        Ok(self.sign_claims(&claims))
    }

    /// Signs arbitrary claims (tests use it to make expired tokens).
    pub fn sign_claims(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: Some("JWT".into()),
        };
        let header = B64URL.encode(serde_json::to_vec(&header).expect("header serializes"));
        let claims = B64URL.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{claims}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64URL.encode(signature.to_bytes()))
    }
}

/// Verifies tokens of the issuers we trust.
///
/// A token whose signature verified is remembered (by its SHA-256, at most
/// [`TOKEN_CACHE_ENTRIES_MAX`] of them) so repeated calls with the same token
/// skip the Ed25519 verification (~50 µs); its times are checked on every
/// use, so a cached token still expires.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    issuers: HashMap<String, VerifyingKey>,
    verified: Arc<Mutex<HashMap<[u8; 32], Claims>>>,
}

impl TokenVerifier {
    /// Trusts tokens whose `iss` is `issuer` and that `key` verifies.
    pub fn trust(&mut self, issuer: String, key: VerifyingKey) {
        self.issuers.insert(issuer, key);
    }

    /// Parses a public key given as standard or URL-safe base64 of 32 bytes.
    pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KmsError> {
        let bytes = B64URL
            .decode(
                text.trim()
                    .trim_end_matches('=')
                    .replace('+', "-")
                    .replace('/', "_"),
            )
            .map_err(|e| KmsError::BadRequest(format!("public key not base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KmsError::BadRequest("public key must be 32 bytes".into()))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|e| KmsError::BadRequest(format!("public key: {e}")))
    }

    /// The claims of `token` if it is valid at `now_unix_s`.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Claims, KmsError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self
            .verified
            .lock()
            .expect("token cache lock")
            .get(&digest)
            .cloned();
        if let Some(claims) = cached {
            check_times(&claims, now_unix_s)?;
            return Ok(claims);
        }
        let claims = self.verify_signed(token, now_unix_s)?;
        let mut verified = self.verified.lock().expect("token cache lock");
        if verified.len() >= TOKEN_CACHE_ENTRIES_MAX {
            verified.clear();
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    fn verify_signed(&self, token: &str, now_unix_s: u64) -> Result<Claims, KmsError> {
        let invalid = |reason: &str| KmsError::TokenInvalid(reason.to_owned());
        if token.len() > TOKEN_BYTES_MAX {
            return Err(invalid("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not three dot-separated parts"));
        };
        let header: Header = decode_json(header).ok_or_else(|| invalid("header malformed"))?;
        if header.alg != "EdDSA" {
            return Err(invalid("alg must be EdDSA"));
        }
        let decoded: Claims = decode_json(claims).ok_or_else(|| invalid("claims malformed"))?;
        let key = self
            .issuers
            .get(&decoded.iss)
            .ok_or_else(|| invalid("unknown issuer"))?;
        let signature = B64URL
            .decode(signature)
            .map_err(|_| invalid("signature not base64url"))?;
        let signature =
            Signature::from_slice(&signature).map_err(|_| invalid("signature length"))?;
        let signing_input = &token[..header_and_claims_len(token)];
        key.verify_strict(signing_input.as_bytes(), &signature)
            .map_err(|_| invalid("signature does not verify"))?;
        check_times(&decoded, now_unix_s)?;
        validate_user(&decoded.sub).map_err(|_| invalid("subject is not a valid user name"))?;
        Ok(decoded)
    }
}

fn header_and_claims_len(token: &str) -> usize {
    token.rfind('.').expect("three parts checked")
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = B64URL.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn check_times(claims: &Claims, now_unix_s: u64) -> Result<(), KmsError> {
    if claims.exp <= now_unix_s {
        return Err(KmsError::TokenExpired {
            ago_s: now_unix_s - claims.exp,
        });
    }
    if claims.iat > now_unix_s + TOKEN_IAT_SKEW_S_MAX {
        return Err(KmsError::TokenInvalid("issued in the future".into()));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now_unix_s + TOKEN_IAT_SKEW_S_MAX)
    {
        return Err(KmsError::TokenInvalid("not valid yet (nbf)".into()));
    }
    Ok(())
}

/// Parses a duration such as `90s`, `15m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit_s) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'd')) => (&text[..at], 86_400),
        Some(_) => (text, 1),
        None => return Err("empty duration".into()),
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?} (e.g. 90s, 15m, 1h, 7d)"))?;
    count
        .checked_mul(unit_s)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("bad duration {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(issuer: &str, seed: u8) -> (TokenSigner, TokenVerifier) {
        let signer = TokenSigner::new(issuer.into(), &[seed; 32]);
        let mut verifier = TokenVerifier::default();
        verifier.trust(issuer.into(), signer.verifying_key());
        (signer, verifier)
    }

    #[test]
    fn issued_token_verifies_until_it_expires() {
        let (signer, verifier) = pair("kms", 1);
        let token = signer.issue("alice", 1000, 60).unwrap();
        assert_eq!(verifier.verify(&token, 1059).unwrap().sub, "alice");
        assert!(matches!(
            verifier.verify(&token, 1060),
            Err(KmsError::TokenExpired { ago_s: 0 })
        ));
    }

    #[test]
    fn another_key_or_issuer_or_alg_is_refused() {
        let (_, verifier) = pair("kms", 1);
        let (other, _) = pair("kms", 2);
        let forged = other.issue("alice", 1000, 60).unwrap();
        assert!(matches!(
            verifier.verify(&forged, 1001),
            Err(KmsError::TokenInvalid(_))
        ));
        let (stranger, _) = pair("elsewhere", 1);
        let token = stranger.issue("alice", 1000, 60).unwrap();
        assert!(matches!(
            verifier.verify(&token, 1001),
            Err(KmsError::TokenInvalid(_))
        ));
        let none_alg = format!(
            "{}.{}.",
            B64URL.encode(r#"{"alg":"none"}"#),
            token.split('.').nth(1).unwrap()
        );
        assert!(verifier.verify(&none_alg, 1001).is_err());
    }

    #[test]
    fn changed_claims_break_the_signature() {
        let (signer, verifier) = pair("kms", 1);
        let token = signer.issue("alice", 1000, 60).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let claims = Claims {
            iss: "kms".into(),
            sub: "bob".into(),
            iat: 1000,
            exp: 1060,
            nbf: None,
        };
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert!(matches!(
            verifier.verify(&swapped, 1001),
            Err(KmsError::TokenInvalid(_))
        ));
        for garbage in ["", "a.b", "a.b.c.d", &"x".repeat(TOKEN_BYTES_MAX + 1)] {
            assert!(verifier.verify(garbage, 1001).is_err());
        }
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("30"), Ok(30));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("").is_err());
    }
}

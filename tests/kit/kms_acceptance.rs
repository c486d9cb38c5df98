//! The lsvkms acceptance flow, against a started service: one data key
//! through its life (datakey, unwrap and refusals, disable and enable,
//! wrapping-key rotation and rewrap, destroy for ever), shared by the tests
//! of each wrapping-key backend.

use lsvblk::crypto::DataKey;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::auth::token::{Claims, TokenSigner};
use lsvblk::kms::keys::KeyAction;
use lsvblk::kms::service::now_unix_s;

use super::kms::{ISSUER, Kms, api_error};

/// What the flow saw, for the tests that look for leaks afterwards.
pub struct FlowOutcome {
    /// Every DEK the client received.
    pub deks: Vec<Vec<u8>>,
}

fn same_key(a: &DataKey, b: &DataKey) -> bool {
    a.id() == b.id() && a.expose_secret() == b.expose_secret()
}

/// The acceptance flow, against a started service.
pub fn acceptance_flow(kms: &mut Kms) -> FlowOutcome {
    let flow = Flow::create(kms);
    flow.refusals(kms);
    flow.disable_then_enable(kms);
    let blob_v2 = flow.rotate_and_rewrap(kms);
    flow.destroy_is_forever(kms, &blob_v2);
    let (ok, text) = kms.audit_verify();
    assert!(ok, "{text}");
    FlowOutcome {
        deks: vec![flow.key.expose_secret().to_vec()],
    }
}

/// One key through its life.
struct Flow {
    context: KeyContext,
    key: DataKey,
    blob_v1: Vec<u8>,
    alice: String,
}

impl Flow {
    /// datakey → unwrap as an ACL user (ok).
    fn create(kms: &Kms) -> Self {
        let client = kms.client();
        let context = KeyContext {
            volume_id: "vol-0001".into(),
            snapshot_id: String::new(),
        };
        let acl = vec!["alice".to_owned(), "carol".to_owned()];
        let generated = client.generate_data_key(&acl, &context).unwrap();
        assert_eq!(generated.wrapping_key_version, 1);
        let alice = kms.token_text("alice", "1h");
        let unwrapped = client
            .unwrap(&generated.wrapped_blob, &context, &alice)
            .unwrap();
        assert!(
            same_key(&unwrapped, &generated.key),
            "unwrap returns the DEK datakey returned"
        );
        Flow {
            context,
            key: generated.key,
            blob_v1: generated.wrapped_blob,
            alice,
        }
    }

    /// Non-ACL user (403, audited), expired token (401), token signed by
    /// another key (401), tampered blob (400, no panic), other context (400).
    fn refusals(&self, kms: &Kms) {
        let client = kms.client();
        let (blob, context) = (&self.blob_v1, &self.context);
        let bob = kms.token_text("bob", "1h");
        assert_eq!(
            api_error(client.unwrap(blob, context, &bob)),
            (403, "not_on_acl".into())
        );
        let records = client.audit(Some(self.key.id()), 100).unwrap();
        let denial = records
            .iter()
            .rev()
            .find(|r| r["action"] == "unwrap")
            .unwrap();
        assert_eq!(
            (denial["user"].as_str(), denial["decision"].as_str()),
            (Some("bob"), Some("deny"))
        );
        assert_eq!(denial["reason"], "not_on_acl");

        let now = now_unix_s();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            iat: now - 7200,
            exp: now - 3600,
            nbf: None,
        };
        let expired = kms.signer().sign_claims(&claims);
        assert_eq!(
            api_error(client.unwrap(blob, context, &expired)),
            (401, "token_expired".into())
        );
        let forged = TokenSigner::new(ISSUER.into(), &[42; 32])
            .issue("alice", now, 3600)
            .unwrap();
        assert_eq!(
            api_error(client.unwrap(blob, context, &forged)),
            (401, "token_invalid".into())
        );

        for index in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[index] ^= 0x40;
            let (status, code) = api_error(client.unwrap(&tampered, context, &self.alice));
            assert_eq!(status, 400, "byte {index}: {code}");
        }
        assert_eq!(
            api_error(client.unwrap(&blob[..20], context, &self.alice)).0,
            400
        );
        let other = KeyContext {
            volume_id: "vol-0002".into(),
            snapshot_id: String::new(),
        };
        assert_eq!(
            api_error(client.unwrap(blob, &other, &self.alice)),
            (400, "context_mismatch".into())
        );
        assert!(
            client.health().is_ok(),
            "still serving after the tampered blobs"
        );
    }

    /// disable (refused) → enable (served again).
    fn disable_then_enable(&self, kms: &Kms) {
        let client = kms.client();
        let id = self.key.id();
        assert_eq!(
            client.set_key_state(id, KeyAction::Disable).unwrap().status,
            "disabled"
        );
        assert_eq!(
            api_error(client.unwrap(&self.blob_v1, &self.context, &self.alice)),
            (409, "key_disabled".into())
        );
        assert_eq!(
            client.set_key_state(id, KeyAction::Enable).unwrap().status,
            "enabled"
        );
        assert!(same_key(
            &client
                .unwrap(&self.blob_v1, &self.context, &self.alice)
                .unwrap(),
            &self.key
        ));
    }

    /// rotate → rewrap → old and new blob both unwrap to the same DEK.
    fn rotate_and_rewrap(&self, kms: &Kms) -> Vec<u8> {
        let client = kms.client();
        assert_eq!(client.rotate_wrapping_key().unwrap().current_version, 2);
        let rewrapped = client.rewrap(&self.blob_v1).unwrap();
        assert_eq!(
            (rewrapped.wrapping_key_version, rewrapped.key_id),
            (2, self.key.id())
        );
        let blob_v2 = rewrapped.wrapped_blob.0;
        assert_ne!(self.blob_v1, blob_v2);
        for blob in [&self.blob_v1, &blob_v2] {
            assert!(same_key(
                &client.unwrap(blob, &self.context, &self.alice).unwrap(),
                &self.key
            ));
        }
        let info = client.key_info(self.key.id()).unwrap();
        assert_eq!(info.wrapping_key_versions, vec![1, 2]);
        assert_eq!(info.acl, ["alice", "carol"]);
        assert_eq!(info.key_type, lsvblk::crypto::KeyKind::Aes256Xts);
        blob_v2
    }

    /// destroy → refused forever, also after a restart.
    fn destroy_is_forever(&self, kms: &mut Kms, blob_v2: &[u8]) {
        let id = self.key.id();
        let refused = |kms: &Kms| {
            let client = kms.client();
            for blob in [&self.blob_v1[..], blob_v2] {
                assert_eq!(
                    api_error(client.unwrap(blob, &self.context, &self.alice)),
                    (409, "key_destroyed".into())
                );
            }
            assert_eq!(client.key_info(id).unwrap().status, "destroyed");
        };
        let client = kms.client();
        assert_eq!(
            client.set_key_state(id, KeyAction::Destroy).unwrap().status,
            "destroyed"
        );
        refused(kms);
        assert_eq!(
            api_error(client.set_key_state(id, KeyAction::Enable)),
            (409, "invalid_transition".into())
        );
        assert_eq!(
            api_error(client.rewrap(blob_v2)),
            (409, "key_destroyed".into())
        );
        drop(client);
        kms.stop();
        kms.serve();
        refused(kms);
    }
}

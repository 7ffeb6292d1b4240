//! The verifier against tokens signed here: every check, the key follower, and
//! that any malformed input is refused as `UNAUTHENTICATED`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::keys::secret_of;
use crate::*;

fn setup() -> (tempdir::Dir, Minter, Arc<Verifier>) {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("key");
    ensure_dev_key(&path).expect("key");
    let minter = Minter::hs256_file(&path).expect("minter");
    let verifier = AuthConfig::hs256_file(&path)
        .verifier()
        .expect("verifier")
        .expect("some");
    (dir, minter, verifier)
}

/// A token with this header and these claims, signed with the key at `path`.
fn signed(path: &Path, header: &str, claims: &str) -> String {
    let secret = secret_of(&std::fs::read(path).expect("key")).expect("secret");
    let encode =
        |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.as_bytes());
    let message = format!("{}.{}", encode(header), encode(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(&secret),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

/// Runs `check` on values from `strategy` against the dev-key verifier.
fn property<S: proptest::strategy::Strategy>(
    strategy: S,
    check: impl Fn(&Authenticator, &Path, S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let (dir, _minter, verifier) = setup();
    let auth = Authenticator::new(Some(verifier));
    let path = dir.path().join("key");
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 512,
        ..Default::default()
    });
    runner
        .run(&strategy, |value| check(&auth, &path, value))
        .expect("property");
}

fn with_authorization(value: &str) -> Option<tonic::metadata::MetadataMap> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", value.parse().ok()?);
    Some(metadata)
}

#[test]
fn any_authorization_value_is_refused_as_unauthenticated() {
    property("\\PC{0,120}", |auth, _, value| {
        let Some(metadata) = with_authorization(&value) else {
            return Ok(());
        };
        let refused = auth.authenticate(&metadata).expect_err("not a valid token");
        proptest::prop_assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        proptest::prop_assert!(!refused.message().contains(&value) || value.len() < 8);
        Ok(())
    });
}

#[test]
fn any_jwt_shaped_bearer_is_refused_as_unauthenticated() {
    let part = || "[A-Za-z0-9_=+/-]{0,60}";
    property(
        (part(), part(), part()),
        |auth, _, (header, payload, signature)| {
            let Some(metadata) =
                with_authorization(&format!("Bearer {header}.{payload}.{signature}"))
            else {
                return Ok(());
            };
            let refused = auth.authenticate(&metadata).expect_err("not a valid token");
            proptest::prop_assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            Ok(())
        },
    );
}

#[test]
fn any_signed_claims_are_accepted_or_refused_as_unauthenticated() {
    let claim = proptest::prop_oneof![
        proptest::strategy::Just("1".to_owned()),
        proptest::strategy::Just("null".to_owned()),
        proptest::strategy::Just("\"x\"".to_owned()),
        proptest::strategy::Just("[]".to_owned()),
        proptest::strategy::Just("{}".to_owned()),
        proptest::strategy::Just("4102444800".to_owned()),
        proptest::strategy::Just("-1".to_owned()),
        proptest::strategy::Just("1e400".to_owned()),
        proptest::strategy::Just("[\"jobs:read\"]".to_owned()),
        "\\PC{0,12}".prop_map(|text| serde_json::Value::from(text).to_string()),
    ];
    use proptest::strategy::Strategy as _;
    let name = proptest::sample::select(vec![
        "exp", "nbf", "iat", "sub", "tenant", "scope", "scopes", "iss", "aud", "x",
    ]);
    let claims = proptest::collection::vec((name, claim), 0..8).prop_map(|pairs| {
        let body: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("\"{name}\":{value}"))
            .collect();
        format!("{{{}}}", body.join(","))
    });
    property(claims, |auth, path, claims| {
        let token = signed(path, r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
        let metadata = with_authorization(&format!("Bearer {token}")).expect("ascii");
        if let Err(refused) = auth.authenticate(&metadata) {
            proptest::prop_assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{}", claims);
        }
        Ok(())
    });
}

#[test]
fn crit_headers_repeated_claims_and_malformed_times_are_refused() {
    let (dir, _minter, verifier) = setup();
    let path = dir.path().join("key");
    let exp = an_hour_from_now();
    let good = format!(r#"{{"sub":"t","tenant":"acme","scope":"jobs:read","exp":{exp}}}"#);
    let plain = r#"{"alg":"HS256","typ":"JWT"}"#;
    assert!(verifier.verify(&signed(&path, plain, &good)).is_ok());
    assert_eq!(
        verifier
            .verify(&signed(
                &path,
                r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
                &good
            ))
            .expect_err("crit"),
        Refusal::Critical
    );
    let twice = format!(
        r#"{{"sub":"t","tenant":"acme","tenant":"other","scope":"jobs:read","exp":{exp}}}"#
    );
    assert_eq!(
        verifier
            .verify(&signed(&path, plain, &twice))
            .expect_err("two tenants")
            .to_string(),
        "the token claims are invalid: the claim \"tenant\" appears more than once"
    );
    let bad_exp = r#"{"sub":"t","tenant":"acme","exp":"tomorrow"}"#;
    assert_eq!(
        verifier
            .verify(&signed(&path, plain, bad_exp))
            .expect_err("exp as text")
            .to_string(),
        "the token claims are invalid: \"exp\" must be a number of seconds since 1970-01-01, not \"\\\"tomorrow\\\"\""
    );
}

/// Seconds since 1970 an hour from now.
fn an_hour_from_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600
}

#[test]
fn the_follower_installs_a_new_key_only_once_it_reads_the_same_twice() {
    let (dir, old_minter, verifier) = setup();
    let path = dir.path().join("key");
    let old = old_minter
        .mint("t", Some("acme"), &scope::USER, Duration::from_secs(60))
        .expect("mint");
    let mut pending = None;
    assert!(!verifier.settle(&mut pending).expect("unchanged"));

    // Caught mid-write: a usable but partial secret, then the whole one.
    let whole = "0123456789abcdef0123456789abcdef-the-whole-new-secret";
    std::fs::write(&path, &whole[..40]).expect("write");
    assert!(!verifier.settle(&mut pending).expect("first sight"));
    std::fs::write(&path, whole).expect("write");
    assert!(!verifier.settle(&mut pending).expect("changed again"));
    assert!(verifier.verify(&old).is_ok(), "the old key is still in use");

    assert!(verifier.settle(&mut pending).expect("the same twice"));
    let new = Minter::hs256_file(&path)
        .expect("minter")
        .mint("t", Some("acme"), &scope::USER, Duration::from_secs(60))
        .expect("mint");
    assert!(verifier.verify(&new).is_ok());
    assert_eq!(verifier.verify(&old).err(), Some(Refusal::Signature));
    assert!(!verifier.settle(&mut pending).expect("settled"));
}

mod tempdir {
    pub(super) struct Dir(std::path::PathBuf);
    impl Dir {
        pub(super) fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "jobmesh-auth-{}-{}",
                std::process::id(),
                uuid_like()
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
        pub(super) fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn uuid_like() -> u64 {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        u64::from_le_bytes(b)
    }
}

#[test]
fn a_minted_token_names_its_tenant_and_scopes() {
    let (_dir, minter, verifier) = setup();
    let token = minter
        .mint(
            "alice",
            Some("acme"),
            &[scope::SUBMIT, scope::READ],
            Duration::from_secs(60),
        )
        .expect("mint");
    let caller = verifier.verify(&token).expect("valid");
    assert_eq!(caller.tenant.as_deref(), Some("acme"));
    assert_eq!(caller.subject, "alice");
    assert!(caller.has(scope::SUBMIT));
    assert!(caller.has(scope::READ));
    assert!(!caller.has(scope::CANCEL));
    assert!(!caller.has(scope::WORKER));
    let denied = caller.require(scope::CANCEL).expect_err("no cancel");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("jobs:cancel"),
        "{}",
        denied.message()
    );
}

#[test]
fn admin_implies_tenant_scopes_but_not_worker() {
    let (_dir, minter, verifier) = setup();
    let token = minter
        .mint(
            "ops",
            Some("acme"),
            &[scope::ADMIN],
            Duration::from_secs(60),
        )
        .expect("mint");
    let caller = verifier.verify(&token).expect("valid");
    for s in scope::USER {
        assert!(caller.has(s), "{s}");
    }
    assert!(!caller.has(scope::WORKER));
}

#[test]
fn each_bad_token_says_which_check_failed() {
    let (_dir, minter, verifier) = setup();
    let expired = {
        let mut m = minter
            .mint("a", Some("t"), &[], Duration::ZERO)
            .expect("mint");
        // exp = now, beyond the leeway only after 30 s: forge an old one instead.
        let parts: Vec<&str> = m.split('.').collect();
        let claims = serde_json::json!({"sub": "a", "tenant": "t", "exp": 1_000_000});
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        m = format!("{}.{}.{}", parts[0], payload, parts[2]);
        m
    };
    // The forged payload breaks the signature, which is checked first.
    assert_eq!(verifier.verify(&expired).err(), Some(Refusal::Signature));
    assert_eq!(verifier.verify("abc").err(), Some(Refusal::Malformed));
    let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
    assert_eq!(
        verifier.verify(&format!("{none_header}.e30.")).err(),
        Some(Refusal::AlgNone)
    );
    let rs_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    assert!(matches!(
        verifier.verify(&format!("{rs_header}.e30.c2ln")),
        Err(Refusal::Algorithm { .. })
    ));
}

#[test]
fn secrets_never_print() {
    let secret: Secret = "hunter2".parse().expect("infallible");
    assert_eq!(format!("{secret:?}"), "***");
    let bearer = Bearer::new(Some("tok"));
    assert_eq!(format!("{bearer:?}"), "Bearer(***)");
}

#[test]
fn a_production_start_without_a_key_is_refused() {
    let config = AuthConfig {
        auth_tenant_claim: "tenant".to_owned(),
        ..AuthConfig::default()
    };
    assert!(matches!(config.verifier(), Err(SetupError::NoKey)));
    assert!(AuthConfig::insecure().verifier().expect("ok").is_none());
}

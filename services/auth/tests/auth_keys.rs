//! Token verification in `jobmesh_auth`, tested with real keys.
//!
//! The fixtures in `tests/keys/` come from the `openssl` CLI (see the README there).
//! The tests show that:
//! - tokens minted from RSA, P-256 and Ed25519 PKCS#8 private keys verify against the
//!   matching SPKI public keys (RS256, ES256, EdDSA) and carry the tenant and scopes;
//! - a JWKS picks the verification key by `kid` and refuses a `kid` it does not hold;
//! - each forged, stale or incomplete token gets the `Refusal` for the check it
//!   failed: another key's signature, an HS256 token signed with the public key as
//!   its secret (algorithm confusion), `alg: none`, expired, not yet valid, wrong or
//!   missing issuer, wrong audience, no `exp`;
//! - an unusable key (a private key given as the public key, a short HS256 secret)
//!   stops start-up with `SetupError::Key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use jobmesh_auth::{AuthConfig, Minter, Refusal, SetupError, Verifier, scope};
use jsonwebtoken::{Algorithm, EncodingKey, Header, get_current_timestamp};
use serde_json::{Value, json};

/// An HS256 secret of 43 bytes (RFC 7518 asks for at least 32).
const HS256_SECRET: &[u8] = b"jobmesh-auth-keys-test-secret-0123456789abc";

/// A fixture in `tests/keys/`.
fn key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("keys")
        .join(name)
}

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(key(name)).expect("read a key fixture from tests/keys")
}

/// What the tests configure apart from the key source.
fn config() -> AuthConfig {
    AuthConfig {
        auth_tenant_claim: "tenant".into(),
        auth_leeway_secs: 30,
        ..Default::default()
    }
}

fn verifier_of(config: &AuthConfig) -> Arc<Verifier> {
    config
        .verifier()
        .expect("the configuration builds a verifier")
        .expect("authentication is switched on")
}

/// A verifier for the PEM public key `name`.
fn public_key_verifier(name: &str) -> Arc<Verifier> {
    verifier_of(&AuthConfig {
        auth_public_key_file: Some(key(name)),
        ..config()
    })
}

/// Claims of tenant "acme" with `jobs:read`, expiring at `exp`.
fn claims(exp: u64) -> Value {
    json!({"sub": "alice", "tenant": "acme", "scope": scope::READ, "exp": exp})
}

/// A token from `minter` for "alice" of tenant "acme" with `jobs:read`, valid 5 minutes.
fn mint(minter: &Minter) -> String {
    minter
        .mint(
            "alice",
            Some("acme"),
            &[scope::READ],
            Duration::from_secs(300),
        )
        .expect("mint a token")
}

/// Signs `claims` with `signer` under `alg`, with `kid` in the header when given.
fn sign(alg: Algorithm, kid: Option<&str>, signer: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, signer).expect("sign the test token")
}

fn rsa_signing_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_bytes(name)).expect("an RSA PKCS#8 private key")
}

/// A file in the temp directory, removed when dropped (also when a test fails).
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &[u8]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "jobmesh-auth-keys-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write a temp secret file");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn minted_tokens_verify_against_each_public_key_type() {
    let cases = [
        ("rsa.pem", "rsa.pub.pem", Algorithm::RS256),
        ("ec.pem", "ec.pub.pem", Algorithm::ES256),
        ("ed.pem", "ed.pub.pem", Algorithm::EdDSA),
    ];
    for (private, public, algorithm) in cases {
        let minter = Minter::private_key_file(&key(private)).expect("a usable private key");
        let token = mint(&minter);
        let header = jsonwebtoken::decode_header(&token).expect("a JWT header");
        assert_eq!(header.alg, algorithm, "{private} signs with {algorithm:?}");

        let caller = public_key_verifier(public)
            .verify(&token)
            .unwrap_or_else(|refusal| panic!("{private} → {public}: refused: {refusal}"));
        assert_eq!(caller.subject, "alice", "{public}");
        assert_eq!(caller.tenant.as_deref(), Some("acme"), "{public}");
        assert!(caller.has(scope::READ), "{public}: jobs:read");
        assert!(!caller.has(scope::SUBMIT), "{public}: no jobs:submit");
    }
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let minter = Minter::private_key_file(&key("rsa2.pem")).expect("a usable private key");
    let token = mint(&minter);
    assert_eq!(
        public_key_verifier("rsa.pub.pem").verify(&token).err(),
        Some(Refusal::Signature)
    );
}

#[test]
fn hs256_signed_with_the_public_key_is_refused_as_algorithm_confusion() {
    // The classic attack: the RSA public key is public, so an attacker signs with
    // it as an HMAC secret and hopes the verifier takes `alg` from the token.
    let public_pem = key_bytes("rsa.pub.pem");
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(get_current_timestamp() + 300),
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("sign the forged token");
    assert_eq!(
        public_key_verifier("rsa.pub.pem").verify(&token).err(),
        Some(Refusal::Algorithm {
            found: "HS256".to_owned(),
            accepted: "RS256".to_owned(),
        })
    );
}

#[test]
fn unsigned_tokens_are_refused() {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims(get_current_timestamp() + 300).to_string());
    let token = format!("{header}.{payload}.");
    let jwks = verifier_of(&AuthConfig {
        auth_jwks_file: Some(key("jwks.json")),
        ..config()
    });
    for verifier in [public_key_verifier("rsa.pub.pem"), jwks] {
        assert_eq!(
            verifier.verify(&token).err(),
            Some(Refusal::AlgNone),
            "{verifier:?}"
        );
    }
}

#[test]
fn expiry_and_not_before_are_checked_with_leeway() {
    let secret = TempFile::new("hs256", HS256_SECRET);
    let verifier = verifier_of(&AuthConfig::hs256_file(secret.path()));
    let signing_key = EncodingKey::from_secret(HS256_SECRET);
    let now = get_current_timestamp();

    let expired = sign(Algorithm::HS256, None, &signing_key, &claims(now - 3600));
    assert_eq!(verifier.verify(&expired).err(), Some(Refusal::Expired));

    let mut early = claims(now + 7200);
    early["nbf"] = json!(now + 3600);
    let early = sign(Algorithm::HS256, None, &signing_key, &early);
    assert_eq!(verifier.verify(&early).err(), Some(Refusal::NotYetValid));

    // 5 s past `exp` is within the 30 s leeway.
    let just_expired = sign(Algorithm::HS256, None, &signing_key, &claims(now - 5));
    let caller = verifier
        .verify(&just_expired)
        .unwrap_or_else(|refusal| panic!("within the leeway, yet refused: {refusal}"));
    assert_eq!(caller.tenant.as_deref(), Some("acme"));
}

#[test]
fn issuer_and_audience_must_match_when_configured() {
    let verifier = verifier_of(&AuthConfig {
        auth_public_key_file: Some(key("rsa.pub.pem")),
        auth_issuer: Some("https://idp".to_owned()),
        auth_audience: Some("jobmesh".to_owned()),
        ..config()
    });
    let mut minter = Minter::private_key_file(&key("rsa.pem")).expect("a usable private key");
    let mut mint_with = |issuer: Option<&str>, audience: Option<&str>| {
        minter.issuer = issuer.map(str::to_owned);
        minter.audience = audience.map(str::to_owned);
        mint(&minter)
    };

    let good = mint_with(Some("https://idp"), Some("jobmesh"));
    let caller = verifier
        .verify(&good)
        .unwrap_or_else(|refusal| panic!("matching iss and aud, yet refused: {refusal}"));
    assert_eq!(caller.tenant.as_deref(), Some("acme"));

    let wrong_issuer = mint_with(Some("https://evil"), Some("jobmesh"));
    assert_eq!(
        verifier.verify(&wrong_issuer).err(),
        Some(Refusal::Issuer("https://idp".to_owned()))
    );

    let wrong_audience = mint_with(Some("https://idp"), Some("someone-else"));
    assert_eq!(
        verifier.verify(&wrong_audience).err(),
        Some(Refusal::Audience("jobmesh".to_owned()))
    );

    let no_issuer = mint_with(None, Some("jobmesh"));
    assert_eq!(
        verifier.verify(&no_issuer).err(),
        Some(Refusal::MissingClaim("iss".to_owned()))
    );
}

#[test]
fn a_jwks_picks_the_key_by_kid() {
    let verifier = verifier_of(&AuthConfig {
        auth_jwks_file: Some(key("jwks.json")),
        ..config()
    });
    let rsa = rsa_signing_key("rsa.pem");
    let ed = EncodingKey::from_ed_pem(&key_bytes("ed.pem")).expect("an Ed25519 PKCS#8 key");
    let valid = claims(get_current_timestamp() + 300);

    for (name, token) in [
        ("RS256 k1", sign(Algorithm::RS256, Some("k1"), &rsa, &valid)),
        ("EdDSA k2", sign(Algorithm::EdDSA, Some("k2"), &ed, &valid)),
    ] {
        let caller = verifier
            .verify(&token)
            .unwrap_or_else(|refusal| panic!("{name}: refused: {refusal}"));
        assert_eq!(caller.tenant.as_deref(), Some("acme"), "{name}");
        assert!(caller.has(scope::READ), "{name}");
    }

    let unknown = sign(Algorithm::RS256, Some("nope"), &rsa, &valid);
    assert_eq!(
        verifier.verify(&unknown).err(),
        Some(Refusal::UnknownKid("nope".into()))
    );

    // A kid binds its algorithm: k2 is an EdDSA key, so RS256 under k2 is refused
    // before any signature is checked.
    let mislabelled = sign(Algorithm::RS256, Some("k2"), &rsa, &valid);
    assert_eq!(
        verifier.verify(&mislabelled).err(),
        Some(Refusal::Algorithm {
            found: "RS256".to_owned(),
            accepted: "EdDSA".to_owned(),
        })
    );
}

#[test]
fn a_token_without_exp_is_refused() {
    let no_exp = json!({"sub": "alice", "tenant": "acme", "scope": scope::READ});
    let token = sign(Algorithm::RS256, None, &rsa_signing_key("rsa.pem"), &no_exp);
    assert_eq!(
        public_key_verifier("rsa.pub.pem").verify(&token).err(),
        Some(Refusal::MissingClaim("exp".into()))
    );
}

#[test]
fn unusable_keys_stop_setup() {
    let private_as_public = AuthConfig {
        auth_public_key_file: Some(key("rsa.pem")),
        ..config()
    };
    match private_as_public.verifier() {
        Err(SetupError::Key { path, why }) => {
            assert_eq!(path, key("rsa.pem"));
            assert!(why.contains("private key"), "{why}");
        }
        other => panic!("a private key as the public key must fail setup, got {other:?}"),
    }

    let short = TempFile::new("short", b"0123456789");
    let error = AuthConfig::hs256_file(short.path())
        .verifier()
        .expect_err("a 10-byte HS256 secret must fail setup");
    assert!(matches!(error, SetupError::Key { .. }), "{error:?}");
    assert!(error.to_string().contains("at least 32 bytes"), "{error}");
}

/// The fixture JWKS with only the keys named in `kids`.
fn jwks_with(kids: &[&str]) -> Vec<u8> {
    let mut set: Value =
        serde_json::from_slice(&key_bytes("jwks.json")).expect("the JWKS fixture is JSON");
    if let Some(keys) = set["keys"].as_array_mut() {
        keys.retain(|k| kids.contains(&k["kid"].as_str().unwrap_or_default()));
    }
    serde_json::to_vec(&set).expect("serialise a JWKS")
}

/// Key rotation at an identity provider: the JWKS file is replaced, and after a
/// reload tokens of the new key verify and those of the retired key are refused.
/// A file that is broken mid-rotation keeps the keys in use.
#[test]
fn a_rotated_jwks_takes_effect_on_reload_and_a_broken_one_changes_nothing() {
    let file = TempFile::new("jwks", &jwks_with(&["k1"]));
    let verifier = verifier_of(&AuthConfig {
        auth_jwks_file: Some(file.path().to_owned()),
        ..config()
    });
    let valid = claims(get_current_timestamp() + 300);
    let old = sign(
        Algorithm::RS256,
        Some("k1"),
        &rsa_signing_key("rsa.pem"),
        &valid,
    );
    let ed = EncodingKey::from_ed_pem(&key_bytes("ed.pem")).expect("an Ed25519 PKCS#8 key");
    let new = sign(Algorithm::EdDSA, Some("k2"), &ed, &valid);
    assert!(verifier.verify(&old).is_ok(), "k1 verifies before rotation");
    assert_eq!(
        verifier.verify(&new).err(),
        Some(Refusal::UnknownKid("k2".into()))
    );
    assert!(!verifier.reload().expect("reload"), "unchanged file");

    std::fs::write(file.path(), jwks_with(&["k2"])).expect("rotate the JWKS");
    assert!(verifier.reload().expect("reload the rotated JWKS"));
    assert!(verifier.verify(&new).is_ok(), "k2 verifies after rotation");
    assert_eq!(
        verifier.verify(&old).err(),
        Some(Refusal::UnknownKid("k1".into()))
    );

    for broken in [&b"{\"keys\": ["[..], b"{\"keys\": []}", b""] {
        std::fs::write(file.path(), broken).expect("break the JWKS");
        assert!(
            matches!(verifier.reload(), Err(SetupError::Key { .. })),
            "a broken JWKS is an error: {:?}",
            String::from_utf8_lossy(broken)
        );
        assert!(verifier.verify(&new).is_ok(), "k2 still verifies");
    }
    drop(file);
    assert!(
        matches!(verifier.reload(), Err(SetupError::Read { .. })),
        "a missing file is an error"
    );
    assert!(verifier.verify(&new).is_ok(), "k2 still verifies");
}

/// A new HS256 secret is picked up by the background reload: tokens signed with
/// the old one are refused from then on.
#[tokio::test]
async fn a_new_hs256_secret_is_followed_in_the_background() {
    let file = TempFile::new("hs256", HS256_SECRET);
    let config = AuthConfig {
        auth_hs256_secret_file: Some(file.path().to_owned()),
        auth_reload_secs: 1,
        ..config()
    };
    let verifier = verifier_of(&config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    config.spawn_key_reload(Some(&verifier), &shutdown);
    let old = mint(&Minter::hs256_file(file.path()).expect("minter"));
    assert!(verifier.verify(&old).is_ok());

    std::fs::write(
        file.path(),
        b"a-rotated-hs256-secret-of-more-than-32-bytes\n",
    )
    .expect("rotate the secret");
    let new = mint(&Minter::hs256_file(file.path()).expect("minter"));
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while verifier.verify(&new).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "the new secret was not picked up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(verifier.verify(&old).err(), Some(Refusal::Signature));

    // A secret too short to use is refused; the one in use stays.
    std::fs::write(file.path(), b"short").expect("write a short secret");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(verifier.verify(&new).is_ok());
    shutdown.cancel();
}

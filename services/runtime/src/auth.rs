//! Authentication shared by the gateway (callers), the dispatcher (workers) and the
//! CLI (minting tokens): JWT verification with HS256 secrets or RS256/ES256/EdDSA
//! public keys (PEM or JWKS), the caller's tenant and scopes, the dev signing key,
//! and the client-side interceptor that attaches a bearer token.
//!
//! No token, secret or key ever reaches a log line: [`Secret`] prints as `***`, and
//! failures are described by which check failed, never by the token itself.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind, jwk::JwkSet,
};
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The scopes a token may carry (space-separated `scope` claim, or a `scp` array).
pub mod scope {
    /// Submit jobs (`SubmitJob`, `POST /v1/jobs`).
    pub const SUBMIT: &str = "jobs:submit";
    /// Read jobs and tasks (`GetJob`, `ListJobs`, `CountJobs`, `WatchJob`, `ReadJobLogs`,
    /// `WatchJobs`, `ListTasks`).
    pub const READ: &str = "jobs:read";
    /// Cancel jobs (`CancelJob`).
    pub const CANCEL: &str = "jobs:cancel";
    /// Everything a tenant may do: implies submit, read and cancel.
    pub const ADMIN: &str = "admin";
    /// Connect to the dispatcher as a worker.
    pub const WORKER: &str = "worker";
    /// See the connected workers (`ListWorkers`): workers serve every tenant, so
    /// this is an operator's scope, apart from `jobs:read`.
    pub const WORKERS_READ: &str = "workers:read";
    /// The scopes of a tenant's user.
    pub const USER: [&str; 3] = [SUBMIT, READ, CANCEL];
    /// What `jobmesh dev` prints a token for: a user who also runs the machine,
    /// so may see its workers.
    pub const DEV: [&str; 4] = [SUBMIT, READ, CANCEL, WORKERS_READ];
}

/// Longest tenant name a token may carry.
pub const MAX_TENANT: usize = 128;

/// Tenant of every caller when authentication is switched off.
pub const ANONYMOUS_TENANT: &str = "default";

/// A secret value read from the command line or environment; never printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_owned()))
    }
}

/// How callers prove who they are. One of the three key sources is required
/// unless `--insecure-no-auth` is given.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AuthConfig {
    /// File holding the HS256 shared secret that signs tokens.
    #[arg(long, env = "JOBMESH_AUTH_HS256_SECRET_FILE")]
    pub auth_hs256_secret_file: Option<PathBuf>,
    /// PEM public key (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA) that verifies tokens.
    #[arg(long, env = "JOBMESH_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,
    /// JWKS file (`{"keys": [...]}`) whose keys verify tokens, chosen by `kid`.
    #[arg(long, env = "JOBMESH_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "JOBMESH_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "JOBMESH_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Claim that names the caller's tenant.
    #[arg(long, env = "JOBMESH_AUTH_TENANT_CLAIM", default_value = "tenant")]
    pub auth_tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "JOBMESH_AUTH_LEEWAY_SECS", default_value_t = 30)]
    pub auth_leeway_secs: u64,
    /// How often the key file is read again, in seconds, so that a rotated key
    /// (a new JWKS from the identity provider, a new secret) takes effect without a
    /// restart; 0 reads it only at start.
    #[arg(long, env = "JOBMESH_AUTH_RELOAD_SECS", default_value_t = 10)]
    pub auth_reload_secs: u64,
    /// Run without authentication: every caller is tenant "default" with every
    /// scope. For local experiments only.
    #[arg(long, env = "JOBMESH_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

impl AuthConfig {
    /// Verification with an HS256 secret held in a file (tests, `jobmesh dev`).
    pub fn hs256_file(path: impl Into<PathBuf>) -> Self {
        Self {
            auth_hs256_secret_file: Some(path.into()),
            auth_tenant_claim: "tenant".to_owned(),
            auth_leeway_secs: 30,
            auth_reload_secs: 10,
            ..Self::default()
        }
    }

    /// Authentication switched off.
    pub fn insecure() -> Self {
        Self {
            insecure_no_auth: true,
            auth_tenant_claim: "tenant".to_owned(),
            ..Self::default()
        }
    }

    /// Whether any key source is configured.
    pub fn has_key(&self) -> bool {
        self.auth_hs256_secret_file.is_some()
            || self.auth_public_key_file.is_some()
            || self.auth_jwks_file.is_some()
    }

    /// The verifier this configuration describes; `None` when authentication is
    /// switched off. A production start without a key is refused.
    pub fn verifier(&self) -> Result<Option<Arc<Verifier>>, SetupError> {
        if self.insecure_no_auth {
            if self.has_key() {
                return Err(SetupError::Conflict);
            }
            return Ok(None);
        }
        let source = match (
            &self.auth_hs256_secret_file,
            &self.auth_public_key_file,
            &self.auth_jwks_file,
        ) {
            (Some(path), None, None) => KeySource::Hs256(path.clone()),
            (None, Some(path), None) => KeySource::PublicKey(path.clone()),
            (None, None, Some(path)) => KeySource::Jwks(path.clone()),
            (None, None, None) => return Err(SetupError::NoKey),
            _ => return Err(SetupError::TwoSources),
        };
        let raw = read(source.path())?;
        let keys = source.keys(&raw)?;
        Ok(Some(Arc::new(Verifier {
            keys: RwLock::new(Arc::new(keys)),
            source,
            loaded: Mutex::new(raw),
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            tenant_claim: self.auth_tenant_claim.clone(),
            leeway: self.auth_leeway_secs,
        })))
    }

    /// How often the key file is read again; `None` when only at start.
    pub fn reload_every(&self) -> Option<Duration> {
        (self.auth_reload_secs > 0).then(|| Duration::from_secs(self.auth_reload_secs))
    }

    /// Starts following `verifier`'s key file (when there is a verifier and
    /// reloading is on) until `shutdown`.
    pub fn spawn_key_reload(
        &self,
        verifier: Option<&Arc<Verifier>>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        if let (Some(verifier), Some(every)) = (verifier, self.reload_every()) {
            tokio::spawn(Arc::clone(verifier).follow_key_file(every, shutdown.clone()));
        }
    }
}

/// Where the verification keys come from.
#[derive(Clone, Debug)]
enum KeySource {
    Hs256(PathBuf),
    PublicKey(PathBuf),
    Jwks(PathBuf),
}

impl KeySource {
    fn path(&self) -> &Path {
        match self {
            Self::Hs256(path) | Self::PublicKey(path) | Self::Jwks(path) => path,
        }
    }

    /// The keys in `raw`, the contents of the key file.
    fn keys(&self, raw: &[u8]) -> Result<Vec<VerifyKey>, SetupError> {
        let invalid = |why: String| SetupError::Key {
            path: self.path().to_owned(),
            why,
        };
        match self {
            Self::Hs256(_) => Ok(vec![VerifyKey {
                kid: None,
                key: DecodingKey::from_secret(&secret_of(raw).map_err(invalid)?),
                algorithms: vec![Algorithm::HS256],
            }]),
            Self::PublicKey(_) => {
                let (key, algorithm) = public_key_from_pem(raw).map_err(invalid)?;
                Ok(vec![VerifyKey {
                    kid: None,
                    key,
                    algorithms: vec![algorithm],
                }])
            }
            Self::Jwks(_) => jwks_keys(raw).map_err(invalid),
        }
    }
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "no token verification key configured: give --auth-hs256-secret-file, --auth-public-key-file or --auth-jwks-file, or --insecure-no-auth to run without authentication"
    )]
    NoKey,
    #[error("give only one of --auth-hs256-secret-file, --auth-public-key-file, --auth-jwks-file")]
    TwoSources,
    #[error("--insecure-no-auth cannot be combined with a verification key")]
    Conflict,
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Key { path: PathBuf, why: String },
}

fn read(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The HS256 secret in a secret file's contents: its bytes with surrounding
/// whitespace removed. At least 32 bytes, as RFC 7518 requires for HS256.
fn secret_of(raw: &[u8]) -> Result<Vec<u8>, String> {
    let secret = String::from_utf8_lossy(raw).trim().as_bytes().to_vec();
    if secret.len() < 32 {
        return Err(format!(
            "an HS256 secret must be at least 32 bytes, this one has {}",
            secret.len()
        ));
    }
    Ok(secret)
}

/// The algorithm a PEM public key verifies, from the key type inside it.
fn public_key_from_pem(pem: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key; give the public key".to_owned());
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| "not a PEM file".to_owned())?;
    let contains = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    let bad = |e: jsonwebtoken::errors::Error| format!("cannot read the public key: {e}");
    if text.contains("BEGIN RSA PUBLIC KEY") || contains(RSA) {
        Ok((
            DecodingKey::from_rsa_pem(pem).map_err(bad)?,
            Algorithm::RS256,
        ))
    } else if contains(EC) {
        Ok((
            DecodingKey::from_ec_pem(pem).map_err(bad)?,
            Algorithm::ES256,
        ))
    } else if contains(ED25519) {
        Ok((
            DecodingKey::from_ed_pem(pem).map_err(bad)?,
            Algorithm::EdDSA,
        ))
    } else {
        Err("unsupported key type: use an RSA, P-256 or Ed25519 public key".to_owned())
    }
}

fn jwks_keys(json: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet =
        serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        let algorithms = match jwk.common.key_algorithm {
            Some(declared) => vec![
                Algorithm::from_str(&declared.to_string())
                    .map_err(|_| format!("unsupported key algorithm {declared}"))?,
            ],
            None => key.family().algorithms().to_vec(),
        };
        if algorithms
            .iter()
            .any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
        {
            return Err("symmetric (oct) keys are not accepted from a JWKS".to_owned());
        }
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            key,
            algorithms,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS has no keys".to_owned());
    }
    Ok(keys)
}

struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifies bearer tokens.
pub struct Verifier {
    /// The keys in use; replaced as a whole when the key file changes.
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    source: KeySource,
    /// The key file's contents the keys were read from.
    loaded: Mutex<Vec<u8>>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    leeway: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys().len())
            .field("source", &self.source)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .finish()
    }
}

/// Who is calling, from a verified token.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's `sub` claim (empty when absent).
    pub subject: String,
    /// The tenant claim, when the token has one.
    pub tenant: Option<String>,
    scopes: HashSet<String>,
}

impl Caller {
    /// The caller when authentication is switched off: tenant "default", every scope.
    pub fn anonymous() -> Self {
        Self {
            subject: String::new(),
            tenant: Some(ANONYMOUS_TENANT.to_owned()),
            scopes: [scope::ADMIN, scope::WORKER]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Whether the caller holds `wanted` (`admin` holds every tenant scope).
    pub fn has(&self, wanted: &str) -> bool {
        self.scopes.contains(wanted)
            || (wanted != scope::WORKER && self.scopes.contains(scope::ADMIN))
    }

    /// `PERMISSION_DENIED` unless the caller holds `wanted`.
    pub fn require(&self, wanted: &str) -> Result<(), Status> {
        if self.has(wanted) {
            return Ok(());
        }
        let mut held: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        held.sort_unstable();
        Err(crate::errors::error(
            tonic::Code::PermissionDenied,
            format!(
                "this call needs the scope {wanted:?}; the token has [{}]",
                held.join(" ")
            ),
            "SCOPE_MISSING",
            &[("scope", wanted.to_owned())],
        ))
    }

    /// The caller's tenant, or `PERMISSION_DENIED` when the token names none.
    pub fn tenant(&self, claim: &str) -> Result<&str, Status> {
        self.tenant.as_deref().ok_or_else(|| {
            crate::errors::error(
                tonic::Code::PermissionDenied,
                format!("the token has no {claim:?} claim naming the tenant"),
                "TENANT_MISSING",
                &[("claim", claim.to_owned())],
            )
        })
    }
}

/// Why a token was refused; each says which check failed and never quotes the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization value is not `Bearer <token>`")]
    NotBearer,
    #[error("{0} authorization headers were sent; send exactly one")]
    Repeated(usize),
    #[error("the bearer token is not a well-formed JWT (header.payload.signature, base64url)")]
    Malformed,
    #[error("unsigned tokens (alg \"none\") are refused")]
    AlgNone,
    #[error("the token header lists critical extensions (crit) this verifier does not understand")]
    Critical,
    #[error("token algorithm {found} is not accepted here; accepted: {accepted}")]
    Algorithm { found: String, accepted: String },
    #[error("no verification key has kid {0:?}")]
    UnknownKid(String),
    #[error("the token signature does not verify")]
    Signature,
    #[error("the token has expired (exp is in the past)")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token has no {0:?} claim")]
    MissingClaim(String),
    #[error("the token issuer does not match (expected {0:?})")]
    Issuer(String),
    #[error("the token audience does not match (expected {0:?})")]
    Audience(String),
    #[error("the token claims are invalid: {0}")]
    Claims(String),
}

impl Refusal {
    /// The `ErrorInfo` reason of the refusal, for programs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "TOKEN_MISSING",
            Refusal::NotBearer | Refusal::Repeated(_) => "AUTHORIZATION_MALFORMED",
            Refusal::Malformed => "TOKEN_MALFORMED",
            Refusal::AlgNone | Refusal::Critical | Refusal::Algorithm { .. } => {
                "TOKEN_ALGORITHM_REFUSED"
            }
            Refusal::UnknownKid(_) | Refusal::Signature => "TOKEN_SIGNATURE_INVALID",
            Refusal::Expired => "TOKEN_EXPIRED",
            Refusal::NotYetValid => "TOKEN_NOT_YET_VALID",
            Refusal::MissingClaim(_)
            | Refusal::Issuer(_)
            | Refusal::Audience(_)
            | Refusal::Claims(_) => "TOKEN_CLAIMS_INVALID",
        }
    }
}

impl Verifier {
    /// The claim that names the tenant.
    pub fn tenant_claim(&self) -> &str {
        &self.tenant_claim
    }

    /// The keys in use now.
    fn keys(&self) -> Arc<Vec<VerifyKey>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the key file again and, when its contents changed, verifies with
    /// its keys from now on. Returns whether the keys changed. A file that cannot
    /// be read or holds no usable key changes nothing: the keys in use stay.
    pub fn reload(&self) -> Result<bool, SetupError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let raw = read(self.source.path())?;
        self.install(&mut loaded, raw)
    }

    /// Verifies with the keys in `raw` from now on, unless `raw` is what
    /// `loaded` already holds.
    fn install(&self, loaded: &mut Vec<u8>, raw: Vec<u8>) -> Result<bool, SetupError> {
        if *loaded == raw {
            return Ok(false);
        }
        let keys = self.source.keys(&raw)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        *loaded = raw;
        Ok(true)
    }

    /// One check of the key file by the follower: new contents are installed
    /// only once they read the same on two checks in a row, so a file caught
    /// half-written (a secret cut short is still a usable secret) is never used.
    fn settle(&self, pending: &mut Option<Vec<u8>>) -> Result<bool, SetupError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let raw = read(self.source.path())?;
        if *loaded == raw {
            *pending = None;
            return Ok(false);
        }
        if pending.as_ref() != Some(&raw) {
            self.source.keys(&raw)?;
            *pending = Some(raw);
            return Ok(false);
        }
        *pending = None;
        self.install(&mut loaded, raw)
    }

    /// Checks the key file every `every` until `shutdown`; a change is used once
    /// it reads the same on two checks in a row. Logs each change and each new
    /// problem (the keys in use stay while the file is unusable).
    pub async fn follow_key_file(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let pending = Arc::new(Mutex::new(None::<Vec<u8>>));
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let verifier = Arc::clone(&self);
            let pending = Arc::clone(&pending);
            let outcome = tokio::task::spawn_blocking(move || {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                verifier.settle(&mut pending)
            })
            .await;
            match outcome {
                Ok(Ok(changed)) => {
                    if changed {
                        tracing::info!(file = %self.source.path().display(), keys = self.keys().len(), "verification keys reloaded");
                    }
                    last_problem = None;
                }
                Ok(Err(error)) => {
                    let problem = error.to_string();
                    if last_problem.as_ref() != Some(&problem) {
                        tracing::warn!(error = %problem, "cannot reload the verification keys; the keys loaded before stay in use");
                        last_problem = Some(problem);
                    }
                }
                Err(error) => tracing::warn!(%error, "key reload task failed"),
            }
        }
    }

    /// Verifies a token and returns the caller it names.
    pub fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let header = header_of(token)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg.eq_ignore_ascii_case("none") {
            return Err(Refusal::AlgNone);
        }
        // RFC 7515 §4.1.11: extensions marked critical that the verifier does not
        // understand make the token invalid; this verifier understands none.
        if header.contains_key("crit") {
            return Err(Refusal::Critical);
        }
        let claims = claims_of(token)?;
        if let Some(repeated) = claims.repeated {
            return Err(Refusal::Claims(format!(
                "the claim {} appears more than once",
                crate::quote::quoted(&repeated)
            )));
        }
        for name in ["exp", "nbf", "iat"] {
            if let Some(value) = claims.value.get(name)
                && !value.is_number()
            {
                return Err(Refusal::Claims(format!(
                    "{name:?} must be a number of seconds since 1970-01-01, not {}",
                    crate::quote::quoted(&value.to_string())
                )));
            }
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let keys = self.keys();
        let candidates: Vec<&VerifyKey> = match kid {
            Some(kid) if keys.iter().any(|k| k.kid.is_some()) => {
                let found: Vec<_> = keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if found.is_empty() {
                    return Err(Refusal::UnknownKid(kid.to_owned()));
                }
                found
            }
            _ => keys.iter().collect(),
        };
        let accepted: Vec<Algorithm> = candidates
            .iter()
            .flat_map(|k| k.algorithms.iter().copied())
            .collect();
        let algorithm = Algorithm::from_str(alg)
            .ok()
            .filter(|a| accepted.contains(a))
            .ok_or_else(|| Refusal::Algorithm {
                found: alg.to_owned(),
                accepted: accepted
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut last = Refusal::Signature;
        for key in candidates
            .iter()
            .filter(|k| k.algorithms.contains(&algorithm))
        {
            match jsonwebtoken::decode::<Value>(token, &key.key, &self.validation(algorithm)) {
                Ok(data) => return self.caller(data.claims),
                Err(e) => {
                    last = self.refusal(e);
                    if last != Refusal::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.validate_aud = self.audience.is_some();
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn refusal(&self, error: jsonwebtoken::errors::Error) -> Refusal {
        match error.kind() {
            ErrorKind::InvalidSignature => Refusal::Signature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::ImmatureSignature => Refusal::NotYetValid,
            ErrorKind::InvalidIssuer => Refusal::Issuer(self.issuer.clone().unwrap_or_default()),
            ErrorKind::InvalidAudience => {
                Refusal::Audience(self.audience.clone().unwrap_or_default())
            }
            ErrorKind::MissingRequiredClaim(claim) => Refusal::MissingClaim(claim.clone()),
            ErrorKind::InvalidClaimFormat(claim) => {
                Refusal::Claims(format!("{claim} has the wrong type"))
            }
            ErrorKind::InvalidAlgorithm => Refusal::Algorithm {
                found: "(mismatched)".to_owned(),
                accepted: "the key's own algorithm".to_owned(),
            },
            ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) => Refusal::Malformed,
            _ => Refusal::Malformed,
        }
    }

    fn caller(&self, claims: Value) -> Result<Caller, Refusal> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(t))
                if !t.is_empty() && t.len() <= MAX_TENANT && !t.chars().any(char::is_control) =>
            {
                Some(t.clone())
            }
            Some(_) => {
                return Err(Refusal::Claims(format!(
                    "{:?} must be a string of 1 to {MAX_TENANT} bytes without control characters",
                    self.tenant_claim
                )));
            }
        };
        let mut scopes = HashSet::new();
        for name in ["scope", "scp"] {
            match claims.get(name) {
                Some(Value::String(s)) => {
                    scopes.extend(s.split_whitespace().map(str::to_owned));
                }
                Some(Value::Array(items)) => {
                    scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
                }
                _ => {}
            }
        }
        Ok(Caller {
            subject,
            tenant,
            scopes,
        })
    }
}

/// A token's claims, decoded without trusting them, and the first name that
/// appears twice (JSON parsers disagree on which one wins; a token is refused).
struct Claims {
    value: serde_json::Map<String, Value>,
    repeated: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Claims, A::Error> {
                let mut claims = Claims {
                    value: serde_json::Map::new(),
                    repeated: None,
                };
                while let Some(name) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if claims.value.contains_key(&name) {
                        claims.repeated.get_or_insert(name);
                    } else {
                        claims.value.insert(name, value);
                    }
                }
                Ok(claims)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

fn claims_of(token: &str) -> Result<Claims, Refusal> {
    let payload = token.split('.').nth(1).ok_or(Refusal::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Refusal::Malformed)
}

/// The JOSE header of a token, decoded without trusting it.
fn header_of(token: &str) -> Result<serde_json::Map<String, Value>, Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::Malformed),
    }
}

/// The bearer token of a request's `authorization` metadata.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, Refusal> {
    // Two credentials are one too many: which one a proxy or a library looks at
    // is anyone's guess.
    let sent = metadata.get_all("authorization").iter().count();
    if sent > 1 {
        return Err(Refusal::Repeated(sent));
    }
    let value = metadata.get("authorization").ok_or(Refusal::Missing)?;
    let value = value.to_str().map_err(|_| Refusal::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Refusal::NotBearer);
    }
    Ok(token.trim())
}

/// Server-side interceptor: verifies the bearer token and puts the [`Caller`] in
/// the request's extensions. With a required scope (the dispatcher's worker
/// endpoint) it also refuses callers without it.
#[derive(Clone, Debug)]
pub struct Authenticator {
    verifier: Option<Arc<Verifier>>,
    required: Option<&'static str>,
}

impl Authenticator {
    /// Authenticates with `verifier`; `None` lets everyone in as [`Caller::anonymous`].
    pub fn new(verifier: Option<Arc<Verifier>>) -> Self {
        Self {
            verifier,
            required: None,
        }
    }

    /// Also requires `scope` of every caller.
    pub fn requiring(mut self, scope: &'static str) -> Self {
        self.required = Some(scope);
        self
    }

    /// The caller of a request, or `UNAUTHENTICATED` saying which check failed.
    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::anonymous());
        };
        let caller = bearer(metadata)
            .and_then(|token| verifier.verify(token))
            .map_err(|refusal| {
                tracing::debug!(reason = %refusal, "request refused: unauthenticated");
                crate::errors::error(
                    tonic::Code::Unauthenticated,
                    refusal.to_string(),
                    refusal.reason(),
                    &[],
                )
            })?;
        if let Some(scope) = self.required {
            caller.require(scope)?;
        }
        Ok(caller)
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authenticate(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller an [`Authenticator`] put on a request.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

/// Client-side interceptor: adds `authorization: Bearer <token>` to every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(***)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    /// A token to send with every call; `None` sends none.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.and_then(|t| {
            let mut value: MetadataValue<Ascii> = format!("Bearer {t}").parse().ok()?;
            value.set_sensitive(true);
            Some(value)
        }))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends a bearer token with every call.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<crate::grpc::Channel, Bearer>;

/// Wraps `channel` so every call carries `token`.
pub fn with_token(channel: crate::grpc::Channel, token: Option<&str>) -> AuthChannel {
    tonic::service::interceptor::InterceptedService::new(channel, Bearer::new(token))
}

/// Reads a PEM private key of one type.
type KeyParser = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

/// Signs tokens: HS256 with a secret, or RS256/ES256/EdDSA with a PEM private key.
pub struct Minter {
    key: EncodingKey,
    algorithm: Algorithm,
    /// `iss` of minted tokens, when set.
    pub issuer: Option<String>,
    /// `aud` of minted tokens, when set.
    pub audience: Option<String>,
    /// Claim that carries the tenant.
    pub tenant_claim: String,
}

impl Minter {
    /// HS256 with the secret in `path`.
    pub fn hs256_file(path: &Path) -> Result<Self, SetupError> {
        let secret = secret_of(&read(path)?).map_err(|why| SetupError::Key {
            path: path.to_owned(),
            why,
        })?;
        Ok(Self {
            key: EncodingKey::from_secret(&secret),
            algorithm: Algorithm::HS256,
            issuer: None,
            audience: None,
            tenant_claim: "tenant".to_owned(),
        })
    }

    /// The PEM private key in `path` (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    pub fn private_key_file(path: &Path) -> Result<Self, SetupError> {
        let pem = read(path)?;
        let text = String::from_utf8_lossy(&pem);
        let key_error = |why: String| SetupError::Key {
            path: path.to_owned(),
            why,
        };
        let attempts: [(KeyParser, Algorithm); 3] = [
            (EncodingKey::from_ed_pem, Algorithm::EdDSA),
            (EncodingKey::from_ec_pem, Algorithm::ES256),
            (EncodingKey::from_rsa_pem, Algorithm::RS256),
        ];
        if !text.contains("PRIVATE KEY") {
            return Err(key_error("not a PEM private key".to_owned()));
        }
        for (parse, algorithm) in attempts {
            if let Ok(key) = parse(&pem) {
                // A parse can succeed on the wrong key type; signing proves it.
                let probe = jsonwebtoken::encode(
                    &Header::new(algorithm),
                    &serde_json::json!({"probe": true}),
                    &key,
                );
                if probe.is_ok() {
                    return Ok(Self {
                        key,
                        algorithm,
                        issuer: None,
                        audience: None,
                        tenant_claim: "tenant".to_owned(),
                    });
                }
            }
        }
        Err(key_error(
            "unsupported private key: use RSA, EC P-256 or Ed25519 (PKCS#8 PEM)".to_owned(),
        ))
    }

    /// A token for `subject` of `tenant` with `scopes`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        tenant: Option<&str>,
        scopes: &[&str],
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = serde_json::json!({
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
            "scope": scopes.join(" "),
        });
        if let Some(tenant) = tenant {
            claims[self.tenant_claim.as_str()] = Value::String(tenant.to_owned());
        }
        if let Some(issuer) = &self.issuer {
            claims["iss"] = Value::String(issuer.clone());
        }
        if let Some(audience) = &self.audience {
            claims["aud"] = Value::String(audience.clone());
        }
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
    }
}

/// Where `jobmesh dev` keeps its HS256 signing key: `$JOBMESH_DEV_KEY_FILE`, else
/// `$XDG_DATA_HOME/jobmesh/dev-hs256.key`, else `~/.local/share/jobmesh/dev-hs256.key`.
pub fn dev_key_path() -> PathBuf {
    if let Some(path) = std::env::var_os("JOBMESH_DEV_KEY_FILE") {
        return PathBuf::from(path);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    data.join("jobmesh").join("dev-hs256.key")
}

/// Creates a random HS256 key at `path` (mode 0600) unless one is there; returns
/// whether it was created.
pub fn ensure_dev_key(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            use std::io::Write as _;
            file.write_all(secret.as_bytes())?;
            file.write_all(b"\n")?;
            Ok(true)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        check: impl Fn(
            &Authenticator,
            &Path,
            S::Value,
        ) -> Result<(), proptest::test_runner::TestCaseError>,
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
                proptest::prop_assert_eq!(
                    refused.code(),
                    tonic::Code::Unauthenticated,
                    "{}",
                    claims
                );
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
            let payload =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
            m = format!("{}.{}.{}", parts[0], payload, parts[2]);
            m
        };
        // The forged payload breaks the signature, which is checked first.
        assert_eq!(verifier.verify(&expired).err(), Some(Refusal::Signature));
        assert_eq!(verifier.verify("abc").err(), Some(Refusal::Malformed));
        let none_header =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert_eq!(
            verifier.verify(&format!("{none_header}.e30.")).err(),
            Some(Refusal::AlgNone)
        );
        let rs_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"RS256","typ":"JWT"}"#);
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
}

//! The authentication settings of a service and the verifier they build.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::keys::{KeySource, read};
use crate::verify::Verifier;

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

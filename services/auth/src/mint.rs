//! Signing tokens and the dev signing key: what the CLI (`jobmesh token`,
//! `jobmesh dev`) and the tests use, never a service. Compiled with the `mint`
//! feature.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::config::SetupError;
use crate::keys::{read, secret_of};

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

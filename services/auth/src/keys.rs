//! Verification keys: reading a key file (an HS256 secret, a PEM public key, a
//! JWKS) and following it, so that a rotated key takes effect without a restart.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, jwk::JwkSet};

use crate::config::SetupError;
use crate::verify::Verifier;

/// Where the verification keys come from.
#[derive(Clone, Debug)]
pub(crate) enum KeySource {
    Hs256(PathBuf),
    PublicKey(PathBuf),
    Jwks(PathBuf),
}

impl KeySource {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Hs256(path) | Self::PublicKey(path) | Self::Jwks(path) => path,
        }
    }

    /// The keys in `raw`, the contents of the key file.
    pub(crate) fn keys(&self, raw: &[u8]) -> Result<Vec<VerifyKey>, SetupError> {
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

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The HS256 secret in a secret file's contents: its bytes with surrounding
/// whitespace removed. At least 32 bytes, as RFC 7518 requires for HS256.
pub(crate) fn secret_of(raw: &[u8]) -> Result<Vec<u8>, String> {
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

/// One key that verifies tokens, with the algorithms it verifies.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

impl Verifier {
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
    pub(crate) fn settle(&self, pending: &mut Option<Vec<u8>>) -> Result<bool, SetupError> {
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
}

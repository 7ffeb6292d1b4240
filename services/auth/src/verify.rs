//! Verifying a bearer token: the checks, in order, each with the [`Refusal`] that
//! says which failed, and the [`Caller`] a valid token names.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::Value;
use tonic::Status;

use crate::keys::{KeySource, VerifyKey};
use crate::{ANONYMOUS_TENANT, MAX_TENANT, scope};

/// Verifies bearer tokens.
pub struct Verifier {
    /// The keys in use; replaced as a whole when the key file changes.
    pub(crate) keys: RwLock<Arc<Vec<VerifyKey>>>,
    pub(crate) source: KeySource,
    /// The key file's contents the keys were read from.
    pub(crate) loaded: Mutex<Vec<u8>>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) tenant_claim: String,
    pub(crate) leeway: u64,
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
        Err(jobmesh_runtime::errors::error(
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
            jobmesh_runtime::errors::error(
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
    pub(crate) fn keys(&self) -> Arc<Vec<VerifyKey>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
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
                jobmesh_runtime::quote::quoted(&repeated)
            )));
        }
        for name in ["exp", "nbf", "iat"] {
            if let Some(value) = claims.value.get(name)
                && !value.is_number()
            {
                return Err(Refusal::Claims(format!(
                    "{name:?} must be a number of seconds since 1970-01-01, not {}",
                    jobmesh_runtime::quote::quoted(&value.to_string())
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

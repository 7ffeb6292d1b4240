//! Authentication on gRPC: the server side verifies the bearer token of each
//! call ([`Authenticator`]), the client side sends one ([`Bearer`]).

use std::fmt;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::verify::{Caller, Refusal, Verifier};

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

/// The server side: verifies the bearer token of a call and names its [`Caller`].
/// With a required scope (the dispatcher's worker endpoint) it also refuses
/// callers without it.
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
                jobmesh_runtime::errors::error(
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
    tonic::service::interceptor::InterceptedService<jobmesh_runtime::client::Channel, Bearer>;

/// Wraps `channel` so every call carries `token`.
pub fn with_token(channel: jobmesh_runtime::client::Channel, token: Option<&str>) -> AuthChannel {
    tonic::service::interceptor::InterceptedService::new(channel, Bearer::new(token))
}

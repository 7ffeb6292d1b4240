//! The REST shim, grpc-gateway compatible, served on the gRPC port: requests whose
//! content type is not `application/grpc*` are transcoded from JSON to protobuf
//! with the descriptors built with the code (prost-reflect), sent in-process
//! through the same gRPC services (so authentication, validation, limits and
//! deadlines are the gRPC ones), and the answer transcoded back to proto3
//! canonical JSON. Errors use grpc-gateway's body and status table; server
//! streams are newline-delimited JSON.
//!
//! One file per step: [`layer`] (the tower layer in front of the gRPC routes),
//! [`serve`] (a REST request from route to answer, and its span), [`routes`] (the
//! table from the proto's HTTP annotations), [`bind`] (path and query parameters
//! into fields), [`transcode`] (the request: body, parameters, metadata),
//! [`call`] (the in-process gRPC call), [`deadline`] (its timers), [`json`] (the
//! answer as canonical JSON), [`errors`] (grpc-gateway's error bodies and status
//! table), [`openapi`] (the document).

mod bind;
mod call;
mod codec;
mod deadline;
mod errors;
mod json;
mod layer;
pub(crate) mod openapi;
pub(crate) mod routes;
mod serve;
mod transcode;

use std::sync::Arc;

use bytes::Bytes;
use prost_reflect::DescriptorPool;

pub(crate) use layer::RestLayer;
use routes::Table;

/// Content type of streamed responses: one JSON object per line.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// Path of the generated OpenAPI document.
pub(crate) const OPENAPI_PATH: &str = "/openapi.json";

/// What the shim knows, built once at start-up.
pub(crate) struct Shim {
    pub(super) table: Table,
    pub(super) openapi: Bytes,
    /// Request bodies being read and transcoded. A body is read before the call
    /// reaches the in-flight cap, so limits of the same size bound the reads (and
    /// the memory they hold: at most that many bodies of up to 4 MiB), in all and
    /// per tenant.
    pub(super) reads: Arc<crate::limits::Shares>,
    /// Callers are authenticated before their body is read, and have
    /// `body_timeout` to send it.
    pub(super) auth: Option<jobmesh_auth::Authenticator>,
    pub(super) body_timeout: std::time::Duration,
    /// What the dashboard's pages are told (`/ui/config.json`).
    pub(super) ui: crate::ui::Settings,
}

impl Shim {
    /// Routes for `services` from the descriptor set built with the code; at
    /// most `reads` request bodies are read at once.
    pub(crate) fn new(
        services: &[&str],
        reads: Arc<crate::limits::Shares>,
    ) -> Result<Self, routes::TableError> {
        let pool = DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET)?;
        let table = Table::build(&pool, services)?;
        let openapi = Bytes::from(openapi::document(&table));
        Ok(Self {
            table,
            openapi,
            reads,
            auth: None,
            body_timeout: std::time::Duration::from_secs(5),
            ui: crate::ui::Settings::default(),
        })
    }

    /// The shim telling the dashboard `ui`.
    pub(crate) fn with_ui(mut self, ui: crate::ui::Settings) -> Self {
        self.ui = ui;
        self
    }

    /// The shim refusing callers without valid credentials before it reads their
    /// body, and bodies that take longer than `body_timeout`.
    pub(crate) fn guarded(
        mut self,
        auth: jobmesh_auth::Authenticator,
        body_timeout: std::time::Duration,
    ) -> Self {
        self.auth = Some(auth);
        self.body_timeout = body_timeout;
        self
    }
}

#[cfg(test)]
mod props;

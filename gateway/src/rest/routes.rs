//! The REST route table, derived at start-up from the `google.api.http`
//! annotations in the descriptor set built with the code: an annotated RPC added
//! later gets its route with no new handler. Binding the parameters a route
//! captures into fields is [`super::bind`].

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    /// `{field}` or `{field=*}`: one path segment bound to a (dotted) field path.
    Variable(String),
}

/// An HTTP route of one RPC.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) method: http::Method,
    /// The template as written in the proto, e.g. `/v1/jobs/{job_id}:cancel`.
    pub(crate) template: String,
    pub(crate) segments: Vec<Segment>,
    /// The `:verb` suffix of the last segment, if any.
    pub(crate) verb: Option<String>,
    /// `*` (the whole request), a field name, or empty (no body).
    pub(crate) body: String,
    pub(crate) rpc: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC path.
    pub(crate) grpc_path: String,
}

impl Route {
    pub(crate) fn server_streaming(&self) -> bool {
        self.rpc.is_server_streaming()
    }

    /// The fields bound by the path.
    pub(crate) fn path_fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Variable(field) => Some(field.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches `path`; returns the bound variables (percent-decoded).
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let (path, verb) = split_verb(path);
        if verb.as_deref() != self.verb.as_deref() {
            return None;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut bound = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(field) => {
                    if part.is_empty() {
                        return None;
                    }
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?
                        .into_owned();
                    bound.push((field.clone(), value));
                }
            }
        }
        Some(bound)
    }
}

/// `/v1/jobs/abc:cancel` → (`/v1/jobs/abc`, Some("cancel")): the verb is the part
/// after the last `:` of the last segment.
fn split_verb(path: &str) -> (&str, Option<String>) {
    let last = path.rsplit('/').next().unwrap_or_default();
    match last.rfind(':') {
        Some(i) => {
            let cut = path.len() - last.len() + i;
            (&path[..cut], Some(path[cut + 1..].to_owned()))
        }
        None => (path, None),
    }
}

/// What a request path and method resolve to.
pub(crate) enum Lookup<'a> {
    Found(&'a Route, Vec<(String, String)>),
    /// The path exists with other methods: these (for `Allow`).
    WrongMethod(String),
    NotFound,
}

/// Every route of the public services.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) routes: Vec<Route>,
}

/// Why the route table could not be built (a defect in the proto, found at start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TableError {
    #[error("descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("google.api.http is not in the descriptor set")]
    NoHttpExtension,

    #[error("{rpc}: bad http rule {template:?}: {why}")]
    Template {
        rpc: String,
        template: String,
        why: String,
    },
}

impl Table {
    /// Routes of `services` (full names) from their `google.api.http` rules.
    pub(crate) fn build(pool: &DescriptorPool, services: &[&str]) -> Result<Self, TableError> {
        let http = pool
            .get_extension_by_name("google.api.http")
            .ok_or(TableError::NoHttpExtension)?;
        let mut routes = Vec::new();
        for service in pool
            .services()
            .filter(|s| services.contains(&s.full_name()))
        {
            for rpc in service.methods() {
                let options = rpc.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http).into_owned();
                let Value::Message(rule) = rule else { continue };
                let mut rules = vec![rule.clone()];
                if let Some(Value::List(more)) = rule
                    .get_field_by_name("additional_bindings")
                    .map(|v| v.into_owned())
                {
                    rules.extend(more.into_iter().filter_map(|v| match v {
                        Value::Message(m) => Some(m),
                        _ => None,
                    }));
                }
                for rule in rules {
                    routes.push(route_of(&rpc, &rule)?);
                }
            }
        }
        Ok(Self { routes })
    }

    pub(crate) fn lookup(&self, method: &http::Method, path: &str) -> Lookup<'_> {
        let mut allowed: Vec<&str> = Vec::new();
        for route in &self.routes {
            if let Some(bound) = route.matches(path) {
                if route.method == method {
                    return Lookup::Found(route, bound);
                }
                allowed.push(route.method.as_str());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            allowed.sort_unstable();
            allowed.dedup();
            Lookup::WrongMethod(allowed.join(", "))
        }
    }
}

fn route_of(rpc: &MethodDescriptor, rule: &DynamicMessage) -> Result<Route, TableError> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let (method, template) = [
        (http::Method::GET, "get"),
        (http::Method::POST, "post"),
        (http::Method::PUT, "put"),
        (http::Method::DELETE, "delete"),
        (http::Method::PATCH, "patch"),
    ]
    .into_iter()
    .map(|(m, name)| (m, text(name)))
    .find(|(_, t)| !t.is_empty())
    .ok_or_else(|| TableError::Template {
        rpc: rpc.full_name().to_owned(),
        template: String::new(),
        why: "no get/post/put/delete/patch pattern".to_owned(),
    })?;
    let bad = |why: &str| TableError::Template {
        rpc: rpc.full_name().to_owned(),
        template: template.clone(),
        why: why.to_owned(),
    };
    let (path, verb) = split_verb(&template);
    let mut segments = Vec::new();
    for part in path.trim_start_matches('/').split('/') {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
            if pattern != "*" {
                return Err(bad("only single-segment variables ({field} or {field=*})"));
            }
            if super::bind::find_field(&rpc.input(), field).is_none() {
                return Err(bad(&format!("no field {field:?} in the request")));
            }
            segments.push(Segment::Variable(field.to_owned()));
        } else if part.contains('{') || part.contains('}') {
            return Err(bad("a variable must be a whole segment"));
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    let body = text("body");
    if !body.is_empty() && body != "*" && super::bind::find_field(&rpc.input(), &body).is_none() {
        return Err(bad(&format!("body field {body:?} is not in the request")));
    }
    Ok(Route {
        method,
        segments,
        verb,
        body,
        grpc_path: format!("/{}/{}", rpc.parent_service().full_name(), rpc.name()),
        template,
        rpc: rpc.clone(),
    })
}

/// Groups routes by template, for the OpenAPI document.
pub(crate) fn by_template(table: &Table) -> HashMap<String, Vec<&Route>> {
    let mut grouped: HashMap<String, Vec<&Route>> = HashMap::new();
    for route in &table.routes {
        grouped
            .entry(route.template.clone())
            .or_default()
            .push(route);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let pool = DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET).expect("pool");
        Table::build(
            &pool,
            &[
                jobmesh_proto::service_names::JOB_SERVICE,
                jobmesh_proto::service_names::TASK_SERVICE,
            ],
        )
        .expect("table")
    }

    #[test]
    fn every_annotated_rpc_has_its_route() {
        let table = table();
        let mut routes: Vec<String> = table
            .routes
            .iter()
            .map(|r| format!("{} {} -> {}", r.method, r.template, r.grpc_path))
            .collect();
        routes.sort();
        assert_eq!(
            routes,
            [
                "GET /v1/jobs -> /jobmesh.v1.JobService/ListJobs",
                "GET /v1/jobs/{job_id} -> /jobmesh.v1.JobService/GetJob",
                "GET /v1/jobs/{job_id}/logs -> /jobmesh.v1.JobService/ReadJobLogs",
                "GET /v1/jobs/{job_id}:watch -> /jobmesh.v1.JobService/WatchJob",
                "GET /v1/jobs:count -> /jobmesh.v1.JobService/CountJobs",
                "GET /v1/jobs:watch -> /jobmesh.v1.JobService/WatchJobs",
                "GET /v1/tasks -> /jobmesh.v1.TaskService/ListTasks",
                "GET /v1/workers -> /jobmesh.v1.TaskService/ListWorkers",
                "POST /v1/jobs -> /jobmesh.v1.JobService/SubmitJob",
                "POST /v1/jobs/{job_id}:cancel -> /jobmesh.v1.JobService/CancelJob",
            ]
        );
    }

    #[test]
    fn paths_resolve_with_verbs_variables_and_methods() {
        let table = table();
        let found = |method: http::Method, path: &str| match table.lookup(&method, path) {
            Lookup::Found(route, bound) => format!("{} {bound:?}", route.grpc_path),
            Lookup::WrongMethod(allow) => format!("405 {allow}"),
            Lookup::NotFound => "404".to_owned(),
        };
        assert_eq!(
            found(http::Method::GET, "/v1/jobs/abc"),
            r#"/jobmesh.v1.JobService/GetJob [("job_id", "abc")]"#
        );
        assert_eq!(
            found(http::Method::POST, "/v1/jobs/a%20b:cancel"),
            r#"/jobmesh.v1.JobService/CancelJob [("job_id", "a b")]"#
        );
        assert_eq!(
            found(http::Method::GET, "/v1/jobs/abc:watch"),
            r#"/jobmesh.v1.JobService/WatchJob [("job_id", "abc")]"#
        );
        assert_eq!(
            found(http::Method::GET, "/v1/jobs:watch"),
            "/jobmesh.v1.JobService/WatchJobs []"
        );
        assert_eq!(
            found(http::Method::GET, "/v1/jobs/abc/logs"),
            r#"/jobmesh.v1.JobService/ReadJobLogs [("job_id", "abc")]"#
        );
        assert_eq!(found(http::Method::DELETE, "/v1/jobs/abc"), "405 GET");
        assert_eq!(found(http::Method::GET, "/v1/jobs/abc:explode"), "404");
        assert_eq!(found(http::Method::GET, "/v2/jobs"), "404");
        assert_eq!(found(http::Method::GET, "/v1/jobs//"), "404");
    }
}

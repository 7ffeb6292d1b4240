//! The web dashboard (`/ui/`): plain JavaScript modules and one stylesheet from
//! `gateway/ui/`, embedded in the binary, served on the gateway's own port and
//! origin. The files hold no data: every page reads the public REST API with the
//! reader's token, so serving them needs no token. Every path of a page
//! (`/ui/`, `/ui/jobs/<id>`, `/ui/workers`, `/ui/submit`) answers the same
//! `index.html`; the page's script reads the path.

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use jobmesh_runtime::call::HttpResponse;

/// Where the dashboard lives.
pub(crate) const PREFIX: &str = "/ui/";

/// What the pages are told about this gateway (`/ui/config.json`).
pub(crate) struct Settings {
    config: Bytes,
}

impl Default for Settings {
    /// No trace link.
    fn default() -> Self {
        Self {
            config: Bytes::from_static(br#"{"traceUrl":null}"#),
        }
    }
}

impl Settings {
    /// `trace_url`: where a job's trace is shown, with `{trace_id}` in it
    /// (`--ui-trace-url`); it must be an http(s) URL.
    pub(crate) fn new(trace_url: Option<&str>) -> Result<Self, String> {
        if let Some(url) = trace_url {
            let web = url.starts_with("http://") || url.starts_with("https://");
            if !web || !url.contains("{trace_id}") {
                return Err(format!(
                    "--ui-trace-url {}: give an http(s) URL with {{trace_id}} in it, e.g. http://localhost:16686/trace/{{trace_id}}",
                    jobmesh_runtime::quote::quoted(url)
                ));
            }
        }
        let config = serde_json::json!({ "traceUrl": trace_url });
        Ok(Self {
            config: Bytes::from(config.to_string()),
        })
    }
}

/// The policy of every answer under `/ui/`: the page's own files only, no inline
/// script or style, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("jobs.js", JS),
    asset!("job.js", JS),
    asset!("workers.js", JS),
    asset!("submit.js", JS),
];

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// Whether `rest` (the path after `/ui/`) is one of the dashboard's pages.
fn is_page(rest: &str) -> bool {
    match rest {
        "" | "workers" | "submit" => true,
        _ => rest
            .strip_prefix("jobs/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
    }
}

/// The answer to a request for `path` (`/ui` or under `/ui/`).
pub(crate) fn serve(method: &Method, path: &str, settings: &Settings) -> HttpResponse {
    if path == "/ui" {
        let mut response = plain(StatusCode::PERMANENT_REDIRECT, "the dashboard is at /ui/");
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(PREFIX));
        return response;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard's files are read with GET",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    if rest == "config.json" {
        let mut response = secured(StatusCode::OK, settings.config.clone());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let asset = if is_page(rest) {
        find("index.html")
    } else {
        find(rest).filter(|a| a.name != "index.html")
    };
    match asset {
        Some(asset) => {
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from_static(asset.body)
            };
            let mut response = secured(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            response
        }
        None => plain(
            StatusCode::NOT_FOUND,
            "no such page of the dashboard; start at /ui/",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut response = secured(status, Bytes::from_static(text.as_bytes()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn secured(status: StatusCode, body: Bytes) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_url_must_be_a_web_address_with_the_trace_id() {
        assert!(Settings::new(Some("http://localhost:16686/trace/{trace_id}")).is_ok());
        for bad in [
            "javascript:alert(1)//{trace_id}",
            "http://localhost:16686/trace/",
            "ftp://x/{trace_id}",
        ] {
            let refused = Settings::new(Some(bad)).err().expect(bad);
            assert!(refused.contains("{trace_id}"), "{refused}");
        }
    }

    fn text(name: &str) -> &'static str {
        std::str::from_utf8(find(name).expect(name).body).expect("utf-8")
    }

    #[test]
    fn every_module_the_pages_import_is_embedded() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for line in text(asset.name).lines() {
                let Some((_, rest)) = line.split_once("from \"./") else {
                    continue;
                };
                let imported = rest.split('"').next().unwrap_or_default();
                assert!(
                    find(imported).is_some(),
                    "{} imports {imported}, which is not embedded",
                    asset.name
                );
            }
        }
        let index = text("index.html");
        for linked in ["/ui/style.css", "/ui/app.js"] {
            assert!(index.contains(linked), "{linked}");
        }
    }

    #[test]
    fn no_page_parses_data_as_html() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for forbidden in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !text(asset.name).contains(forbidden),
                    "{} uses {forbidden}",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn pages_share_the_index_and_the_rest_is_not_found() {
        for page in [
            "",
            "workers",
            "submit",
            "jobs/0193e4a1-0000-7000-8000-000000000000",
        ] {
            assert!(is_page(page), "{page}");
        }
        for other in [
            "jobs/",
            "jobs/a/b",
            "index.html",
            "x",
            "workers/",
            "../etc/passwd",
        ] {
            assert!(!is_page(other), "{other}");
        }
        let settings = Settings::default();
        let status = |method: &Method, path: &str| serve(method, path, &settings).status();
        assert_eq!(
            status(&Method::GET, "/ui/index.html"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(&Method::GET, "/ui/../Cargo.toml"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(&Method::POST, "/ui/"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&Method::GET, "/ui"), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(status(&Method::GET, "/ui/config.json"), StatusCode::OK);
    }
}

//! NATS settings and the names of every subject, stream and consumer jobmesh uses.
//! All names derive from one prefix so that several meshes (or parallel tests) can
//! share a NATS server without seeing each other.

use std::time::Duration;

/// How to reach NATS and which names to use there.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsConfig {
    /// NATS server URL (JetStream must be enabled).
    #[arg(
        long = "nats-url",
        env = "JOBMESH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Prefix of every subject, stream and consumer name jobmesh creates, so that
    /// several meshes can share one NATS server.
    #[arg(
        long = "nats-prefix",
        env = "JOBMESH_NATS_PREFIX",
        default_value = "jobmesh"
    )]
    pub prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: "jobmesh".to_owned(),
        }
    }
}

impl NatsConfig {
    /// The work-queue stream holding runnable attempts.
    pub fn stream_name(&self) -> String {
        format!("{}_jobs", self.prefix.replace(['.', '*', '>'], "_"))
    }

    /// Subjects captured by the work-queue stream.
    pub fn jobs_wildcard(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }

    /// Subject of runnable attempts of one task.
    pub fn job_subject(&self, task: &str) -> String {
        format!("{}.jobs.{task}", self.prefix)
    }

    /// The task of a job subject, if it is one.
    pub fn task_of_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(".jobs."))
    }

    /// Durable consumer name of a task (consumer names may not contain dots).
    pub fn consumer_name(&self, task: &str) -> String {
        format!("task:{}", task.replace('.', ":"))
    }

    /// Core NATS subject carrying every change of one job of a tenant:
    /// `<prefix>.events.<tenant token>.<job_id>`, so that one subscription follows
    /// all of a tenant's jobs and nothing else.
    pub fn events_subject(&self, tenant: &str, job_id: &str) -> String {
        format!("{}.events.{}.{job_id}", self.prefix, tenant_token(tenant))
    }

    /// Every change of every job of a tenant.
    pub fn tenant_events_wildcard(&self, tenant: &str) -> String {
        format!("{}.events.{}.*", self.prefix, tenant_token(tenant))
    }

    /// Core NATS subject announcing that new log lines of a job are stored.
    pub fn logs_subject(&self, job_id: &str) -> String {
        format!("{}.logs.{job_id}", self.prefix)
    }

    /// Core NATS subject on which cancellation requests of running attempts are
    /// announced to every dispatcher.
    pub fn cancel_subject(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    /// The URL (or comma-separated URLs) without credentials, for logs and
    /// errors: `nats://user:pass@host` shows as `nats://user:***@host`, a token
    /// (`nats://token@host`) as `nats://***@host`.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|url| {
                let (bare, userinfo) = split_userinfo(url.trim());
                match userinfo {
                    None => bare,
                    Some(userinfo) => {
                        let shown = match userinfo.split_once(':') {
                            Some((user, _)) => format!("{user}:***"),
                            None => "***".to_owned(),
                        };
                        bare.replacen("://", &format!("://{shown}@"), 1)
                    }
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects with settings suited to a long-running service: unlimited
    /// reconnects and bounded buffers.
    pub async fn connect(
        &self,
        name: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        // Credentials go through the options, never inside the URL: the client
        // logs the server address it connects to (at debug), password and all.
        let mut bare = Vec::new();
        let mut credentials = None;
        for url in self.url.split(',') {
            let (url, userinfo) = split_userinfo(url.trim());
            bare.push(url);
            credentials = credentials.or(userinfo);
        }
        let options = async_nats::ConnectOptions::new();
        let options = match credentials.as_deref().map(|c| c.split_once(':')) {
            Some(Some((user, password))) => {
                options.user_and_password(percent_decoded(user), percent_decoded(password))
            }
            Some(None) => {
                options.token(percent_decoded(credentials.as_deref().unwrap_or_default()))
            }
            None => options,
        };
        options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .client_capacity(4096)
            .subscription_capacity(4096)
            .retry_on_initial_connect()
            .connect(bare.join(","))
            .await
    }
}

/// A tenant as one subject token. Tenants may hold any character but control
/// characters, and subjects may not hold `.`, `*`, `>` or spaces: base64url
/// (no padding) is reversible, so two tenants never share a token.
fn tenant_token(tenant: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tenant.as_bytes())
}

/// A URL without its user information, and that user information.
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some(scheme) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let rest = &url[scheme + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => (
            format!("{}{}", &url[..scheme + 3], &rest[at + 1..]),
            Some(rest[..at].to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Limits of the work-queue stream: a full stream refuses new attempts (the outbox
/// keeps them in PostgreSQL and retries), it never drops queued ones.
pub const STREAM_MAX_MESSAGES: i64 = 10_000_000;
/// Largest message the work-queue stream accepts; attempts are a few dozen bytes.
pub const STREAM_MAX_MESSAGE_BYTES: i32 = 64 * 1024;
/// Window in which JetStream drops a second publish with the same `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Creates the work-queue stream if it does not exist (idempotent; called by every
/// service that uses it, in any start order).
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    config: &NatsConfig,
) -> Result<async_nats::jetstream::stream::Stream, async_nats::jetstream::context::CreateStreamError>
{
    use async_nats::jetstream::stream;
    js.get_or_create_stream(stream::Config {
        name: config.stream_name(),
        description: Some("jobmesh runnable job attempts, one subject per task".to_owned()),
        subjects: vec![config.jobs_wildcard()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: STREAM_MAX_MESSAGES,
        max_message_size: STREAM_MAX_MESSAGE_BYTES,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_the_redacted_url() {
        let config = |url: &str| NatsConfig {
            url: url.to_owned(),
            ..NatsConfig::default()
        };
        assert_eq!(
            config("nats://127.0.0.1:4222").redacted_url(),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            config("nats://jobmesh:s3cret@nats:4222").redacted_url(),
            "nats://jobmesh:***@nats:4222"
        );
        assert_eq!(
            config("nats://t0ken@a:4222, tls://u:p@b:4222").redacted_url(),
            "nats://***@a:4222,tls://u:***@b:4222"
        );
        assert_eq!(
            split_userinfo("nats://u:p%40ss@h:4222/x@y"),
            ("nats://h:4222/x@y".to_owned(), Some("u:p%40ss".to_owned()))
        );
        assert_eq!(percent_decoded("p%40ss"), "p@ss");
    }
}

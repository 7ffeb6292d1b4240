//! The PostgreSQL pool, database creation and embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// Forward-only migrations, applied in order at start.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_jobs.sql")),
    (2, include_str!("../migrations/0002_attempt_start.sql")),
    (3, include_str!("../migrations/0003_traceparent.sql")),
    (4, include_str!("../migrations/0004_job_logs.sql")),
];

/// Arbitrary constant identifying jobmesh's migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x6a6f_626d_6573_6801;

/// Errors while preparing the database.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL does not parse.
    #[error("invalid database url: {0}")]
    Url(tokio_postgres::Error),
    /// The URL names no database.
    #[error("the database url names no database (add /jobmesh to it)")]
    NoDatabase,
    /// PostgreSQL is unreachable or refused a statement.
    #[error("postgres at {url}: {source} (is PostgreSQL running? `pg_isready -h 127.0.0.1`)")]
    Postgres {
        url: String,
        source: tokio_postgres::Error,
    },
    /// The pool could not be built.
    #[error("postgres pool: {0}")]
    Pool(String),
}

/// Creates the database if it is missing, applies migrations and returns a pool.
pub(crate) async fn connect(url: &str, pool_size: usize) -> Result<Pool, SetupError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(SetupError::Url)?;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("jobmesh-job-store");
    let redacted = redact(url);
    create_database_if_missing(&config, &redacted).await?;
    migrate(&config, &redacted).await?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| SetupError::Pool(e.to_string()))
}

async fn client(
    config: &tokio_postgres::Config,
    url: &str,
) -> Result<tokio_postgres::Client, SetupError> {
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|source| SetupError::Postgres {
                url: url.to_owned(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "setup connection closed");
        }
    });
    Ok(client)
}

async fn create_database_if_missing(
    config: &tokio_postgres::Config,
    url: &str,
) -> Result<(), SetupError> {
    let name = config
        .get_dbname()
        .ok_or(SetupError::NoDatabase)?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let admin = client(&admin, url).await?;
    let pg = |source| SetupError::Postgres {
        url: url.to_owned(),
        source,
    };
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(pg)?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match admin
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another job-store created it at the same moment.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(pg(e)),
        }
    }
    Ok(())
}

async fn migrate(config: &tokio_postgres::Config, url: &str) -> Result<(), SetupError> {
    let mut client = client(config, url).await?;
    let pg = |source| SetupError::Postgres {
        url: url.to_owned(),
        source,
    };
    // Session-level advisory lock: replicas starting together apply migrations once.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS jobmesh_migrations (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        for (version, sql) in MIGRATIONS {
            let applied = client
                .query_opt(
                    "SELECT 1 FROM jobmesh_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if applied {
                continue;
            }
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO jobmesh_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(version, "applied migration");
        }
        Ok::<_, tokio_postgres::Error>(())
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result.map_err(pg)?;
    unlock.map_err(pg)?;
    Ok(())
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

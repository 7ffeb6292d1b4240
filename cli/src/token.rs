//! `jobmesh token`: mint a bearer token, and the dev token the client commands
//! use when none is given.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use jobmesh_auth::{self as auth, Minter, scope};

/// Tenant of the tokens `jobmesh dev` prints and the client commands mint.
pub(crate) const DEV_TENANT: &str = "dev";

#[derive(clap::Args, Debug)]
pub(crate) struct TokenArgs {
    /// Tenant the token acts for.
    #[arg(long, default_value = DEV_TENANT)]
    tenant: String,
    /// Scope to grant (repeatable): jobs:submit, jobs:read, jobs:cancel, admin, worker.
    /// Default: jobs:submit jobs:read jobs:cancel.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Subject (`sub` claim).
    #[arg(long, default_value = "jobmesh-cli")]
    subject: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl_seconds: u64,
    /// HS256 secret file to sign with (default: the dev key of `jobmesh dev`).
    #[arg(long, env = "JOBMESH_AUTH_HS256_SECRET_FILE")]
    hs256_secret_file: Option<PathBuf>,
    /// PEM private key to sign with instead (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, conflicts_with = "hs256_secret_file")]
    private_key_file: Option<PathBuf>,
    /// `iss` claim, when the mesh requires one.
    #[arg(long, env = "JOBMESH_AUTH_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim, when the mesh requires one.
    #[arg(long, env = "JOBMESH_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// Claim that carries the tenant.
    #[arg(long, env = "JOBMESH_AUTH_TENANT_CLAIM", default_value = "tenant")]
    tenant_claim: String,
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let mut minter = if let Some(path) = &args.private_key_file {
        Minter::private_key_file(path)?
    } else {
        let path = args
            .hs256_secret_file
            .clone()
            .unwrap_or_else(auth::dev_key_path);
        if !path.exists() {
            anyhow::bail!(
                "no signing key at {}: start `jobmesh dev` once to create the dev key, or pass --hs256-secret-file / --private-key-file",
                path.display()
            );
        }
        Minter::hs256_file(&path)?
    };
    minter.issuer = args.issuer;
    minter.audience = args.audience;
    minter.tenant_claim = args.tenant_claim;
    let scopes: Vec<&str> = if args.scopes.is_empty() {
        scope::USER.to_vec()
    } else {
        args.scopes.iter().map(String::as_str).collect()
    };
    let token = minter
        .mint(
            &args.subject,
            Some(&args.tenant),
            &scopes,
            Duration::from_secs(args.ttl_seconds),
        )
        .context("signing the token")?;
    println!("{token}");
    Ok(())
}

/// A short-lived user token of tenant "dev" signed with the dev key, when the dev
/// key exists on this machine (so `jobmesh submit` works next to `jobmesh dev`).
pub(crate) fn dev_user_token() -> Option<String> {
    dev_token(DEV_TENANT, &scope::DEV)
}

/// A token of `tenant` with `scopes`, signed with the dev key, valid for an hour
/// (the abuse bench's other tenants).
pub(crate) fn dev_token(tenant: &str, scopes: &[&str]) -> Option<String> {
    let minter = Minter::hs256_file(&auth::dev_key_path()).ok()?;
    minter
        .mint(
            "jobmesh-cli",
            Some(tenant),
            scopes,
            Duration::from_secs(3600),
        )
        .ok()
}

/// A worker token (no tenant, the worker scope) signed with the dev key, valid
/// for a day, when the dev key exists on this machine.
pub(crate) fn dev_worker_token() -> Option<String> {
    let minter = Minter::hs256_file(&auth::dev_key_path()).ok()?;
    minter
        .mint(
            "jobmesh-worker",
            None,
            &[scope::WORKER],
            Duration::from_secs(24 * 3600),
        )
        .ok()
}

#[derive(clap::Args, Debug)]
pub(crate) struct KeygenArgs {
    /// Where the HS256 key goes (kept if it exists; created with mode 0600).
    #[arg(long, env = "JOBMESH_AUTH_HS256_SECRET_FILE")]
    key_file: PathBuf,
    /// Also write a worker token (scope `worker`, valid a year) to this file.
    #[arg(long)]
    worker_token_file: Option<PathBuf>,
    /// Also write a user token (scopes jobs:submit jobs:read jobs:cancel, valid
    /// 30 days) for `--tenant` to this file.
    #[arg(long)]
    user_token_file: Option<PathBuf>,
    /// Tenant of the user token.
    #[arg(long, default_value = "default")]
    tenant: String,
}

pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let created = auth::ensure_dev_key(&args.key_file)
        .with_context(|| format!("creating {}", args.key_file.display()))?;
    let minter = Minter::hs256_file(&args.key_file)?;
    // Tokens are credentials: readable by the owner only.
    let write = |path: &PathBuf, token: String| -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(path)
            .and_then(|mut file| file.write_all(format!("{token}\n").as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
    };
    if let Some(path) = &args.worker_token_file {
        let token = minter.mint(
            "jobmesh-worker",
            None,
            &[scope::WORKER],
            Duration::from_secs(365 * 24 * 3600),
        )?;
        write(path, token)?;
    }
    if let Some(path) = &args.user_token_file {
        let token = minter.mint(
            "jobmesh-user",
            Some(&args.tenant),
            &scope::USER,
            Duration::from_secs(30 * 24 * 3600),
        )?;
        write(path, token)?;
    }
    let state = if created { "created" } else { "kept" };
    println!("{state} {}", args.key_file.display());
    Ok(())
}

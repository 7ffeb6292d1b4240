//! Client commands against a gateway.

use std::collections::HashMap;
use std::io::Write as _;

use anyhow::{Context as _, anyhow, bail};
use jobmesh_auth::{self as auth, AuthChannel};
use jobmesh_proto::json::json_to_struct;
use jobmesh_proto::v1::job_service_client::JobServiceClient;
use jobmesh_proto::v1::task_service_client::TaskServiceClient;
use jobmesh_proto::v1::{self, JobState};

use crate::output;
use crate::watch::{ViewArgs, WatchArgs};

/// Where the gateway is.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct GatewayAddr {
    /// Gateway address.
    #[arg(
        long,
        env = "JOBMESH_GATEWAY_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) gateway: String,
    /// Bearer token (JWT) sent with every call. Without one, a token is minted
    /// with the dev key of `jobmesh dev` when that key exists on this machine.
    #[arg(long, env = "JOBMESH_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<auth::Secret>,
}

impl GatewayAddr {
    pub(crate) fn channel(&self) -> anyhow::Result<AuthChannel> {
        let channel = jobmesh_runtime::client::streaming_channel(&self.gateway)
            .with_context(|| format!("bad gateway address {:?}", self.gateway))?;
        let token = match &self.token {
            Some(token) => Some(token.expose().to_owned()),
            None => crate::token::dev_user_token(),
        };
        Ok(auth::with_token(channel, token.as_deref()))
    }

    pub(crate) fn jobs(&self) -> anyhow::Result<JobClient> {
        Ok(JobServiceClient::new(self.channel()?))
    }
}

/// A client of the public job API.
pub(crate) type JobClient = JobServiceClient<AuthChannel>;

#[derive(clap::Args, Debug)]
pub(crate) struct SubmitArgs {
    /// Task to run, e.g. demo.sleep.
    pub(crate) task: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,
    /// Label key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// Idempotency key: resubmitting with the same key returns the first job.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Attempts allowed (default 3).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_attempts: i32,
    /// Execution timeout of one attempt, in seconds.
    #[arg(long)]
    pub(crate) timeout_seconds: Option<f64>,
    /// Follow the job until it ends (as `jobmesh watch` does).
    #[arg(long)]
    pub(crate) watch: bool,
    /// With --watch: one JSON line per change even on a terminal.
    #[arg(long, requires = "watch")]
    pub(crate) json: bool,
    /// With --watch: also print the job's log lines as they arrive.
    #[arg(long, requires = "watch")]
    pub(crate) logs: bool,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

#[derive(clap::Args, Debug)]
pub(crate) struct JobArgs {
    /// Job id.
    pub(crate) job_id: String,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Only this task.
    #[arg(long)]
    pub(crate) task: Option<String>,
    /// Only this state (queued, running, succeeded, failed, cancelled).
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// Only jobs with this label key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// Jobs per page.
    #[arg(long, default_value_t = 20)]
    pub(crate) page_size: i32,
    /// Page token from a previous listing.
    #[arg(long, default_value = "")]
    pub(crate) page_token: String,
    /// Instead of listing, print one JSON line per change of the matching jobs
    /// from now on, until Ctrl-C.
    #[arg(long, conflicts_with = "page_token")]
    pub(crate) watch: bool,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

fn print(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) fn status(error: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", error.code(), error.message())
}

pub(crate) fn parse_state(state: &str) -> anyhow::Result<JobState> {
    let name = format!("JOB_STATE_{}", state.to_ascii_uppercase());
    JobState::from_str_name(&name).ok_or_else(|| {
        anyhow!("unknown state {state:?} (queued, running, succeeded, failed, cancelled)")
    })
}

pub(crate) async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let parsed: serde_json::Value =
        serde_json::from_str(&args.args).context("--args is not valid JSON")?;
    let serde_json::Value::Object(map) = parsed else {
        bail!("--args must be a JSON object, like '{{\"seconds\": 2}}'");
    };
    let mut labels = HashMap::new();
    for label in &args.labels {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| anyhow!("--label {label:?} is not KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let timeout = args
        .timeout_seconds
        .map(|s| prost_types::Duration::try_from(std::time::Duration::from_secs_f64(s)))
        .transpose()
        .context("--timeout-seconds out of range")?;
    let request = v1::SubmitJobRequest {
        task: args.task,
        args: Some(json_to_struct(&map)),
        idempotency_key: args.idempotency_key.unwrap_or_default(),
        labels,
        max_attempts: args.max_attempts,
        timeout,
        ..Default::default()
    };
    let job = args
        .addr
        .jobs()?
        .submit_job(request)
        .await
        .map_err(status)?
        .into_inner()
        .job
        .unwrap_or_default();
    warn_if_no_worker(&args.addr, &job.task).await;
    if args.watch {
        return crate::watch::watch(WatchArgs {
            job_id: job.id,
            view: ViewArgs {
                json: args.json,
                logs: args.logs,
            },
            addr: args.addr,
        })
        .await;
    }
    print(&output::job(&job))
}

/// Says so on stderr when no connected worker offers `task` (a typo, or a
/// worker not started yet): the job waits QUEUED without a word otherwise.
/// Silent when the tasks cannot be read.
async fn warn_if_no_worker(addr: &GatewayAddr, task: &str) {
    let Ok(channel) = addr.channel() else { return };
    let Ok(response) = TaskServiceClient::new(channel)
        .list_tasks(v1::ListTasksRequest {})
        .await
    else {
        return;
    };
    let tasks = response.into_inner().tasks;
    if tasks.iter().any(|t| t.name == task && t.workers > 0) {
        return;
    }
    let offered: Vec<&str> = tasks
        .iter()
        .filter(|t| t.workers > 0)
        .map(|t| t.name.as_str())
        .collect();
    let offered = if offered.is_empty() {
        "none".to_owned()
    } else {
        offered.join(", ")
    };
    eprintln!(
        "warning: no connected worker offers task {task:?}; the job waits QUEUED until one does (tasks offered now: {offered})"
    );
}

pub(crate) async fn get(args: JobArgs) -> anyhow::Result<()> {
    let job = args
        .addr
        .jobs()?
        .get_job(v1::GetJobRequest {
            job_id: args.job_id,
        })
        .await
        .map_err(status)?
        .into_inner()
        .job
        .unwrap_or_default();
    print(&output::job(&job))
}

pub(crate) async fn list(args: ListArgs) -> anyhow::Result<()> {
    if args.watch {
        return crate::watch::jobs(args).await;
    }
    let state = args.state.as_deref().map(parse_state).transpose()?;
    let response = args
        .addr
        .jobs()?
        .list_jobs(v1::ListJobsRequest {
            page_size: args.page_size,
            page_token: args.page_token,
            task: args.task.unwrap_or_default(),
            state: state.unwrap_or(JobState::Unspecified) as i32,
            labels: args.labels,
        })
        .await
        .map_err(status)?
        .into_inner();
    print(&serde_json::json!({
        "jobs": response.jobs.iter().map(output::job).collect::<Vec<_>>(),
        "nextPageToken": response.next_page_token,
    }))
}

pub(crate) async fn cancel(args: JobArgs) -> anyhow::Result<()> {
    let job = args
        .addr
        .jobs()?
        .cancel_job(v1::CancelJobRequest {
            job_id: args.job_id,
        })
        .await
        .map_err(status)?
        .into_inner()
        .job
        .unwrap_or_default();
    print(&output::job(&job))
}

pub(crate) async fn tasks(addr: GatewayAddr) -> anyhow::Result<()> {
    let response = TaskServiceClient::new(addr.channel()?)
        .list_tasks(v1::ListTasksRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let tasks: Vec<_> = response
        .tasks
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "workers": t.workers, "slots": t.slots,
                "freeSlots": t.free_slots, "queueDepth": t.queue_depth.to_string(),
            })
        })
        .collect();
    print(&serde_json::json!({ "tasks": tasks }))
}

//! `jobmesh workers`: the connected workers, as a table on a terminal and as JSON
//! otherwise.

use std::io::{self, IsTerminal as _, Write as _};

use anyhow::anyhow;
use jobmesh_proto::v1::{self, task_service_client::TaskServiceClient};

use crate::client::{GatewayAddr, status};
use crate::output;

#[derive(clap::Args, Debug)]
pub(crate) struct WorkersArgs {
    /// JSON even on a terminal (the output when stdout is not a terminal).
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

pub(crate) async fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    let response = TaskServiceClient::new(args.addr.channel()?)
        .list_workers(v1::ListWorkersRequest {})
        .await
        .map_err(|error| {
            if error.code() == tonic::Code::PermissionDenied {
                anyhow!(
                    "{:#} (listing workers needs the scope workers:read or admin, e.g. a token from `jobmesh token --scope workers:read`)",
                    status(error)
                )
            } else {
                status(error)
            }
        })?
        .into_inner();
    if args.json || !io::stdout().is_terminal() {
        let workers: Vec<_> = response.workers.iter().map(output::worker).collect();
        let mut out = io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "workers": workers }))?;
        writeln!(out)?;
        return Ok(());
    }
    if response.workers.is_empty() {
        writeln!(io::stdout().lock(), "no workers connected")?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "WORKER",
            "TASKS",
            "SLOTS",
            "JOBS",
            "CONNECTED",
            "LAST SEEN",
            "PROGRAM",
        ]
        .map(str::to_owned),
    ];
    rows.extend(response.workers.iter().map(row));
    let mut out = io::stdout().lock();
    for line in table(&rows) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn row(worker: &v1::WorkerInfo) -> [String; 7] {
    let seen = output::between(&worker.last_seen_time, &None)
        .map(|ago| format!("{} ago", output::span(ago)))
        .unwrap_or_else(|| "-".to_owned());
    let mut program = [worker.name.as_str(), worker.version.as_str()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !worker.host.is_empty() {
        program = format!("{program} @ {}", worker.host)
            .trim_start()
            .to_owned();
    }
    [
        worker.worker_id.clone(),
        worker.tasks.join(","),
        format!("{}/{}", worker.slots_in_use, worker.slots),
        worker.job_ids.len().to_string(),
        output::second(&worker.connect_time),
        seen,
        program,
    ]
}

/// Rows as left-aligned columns two spaces apart; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
                if i + 1 == N {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

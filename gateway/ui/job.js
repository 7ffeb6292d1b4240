// `/ui/jobs/<id>` — one job: what it is, where it is, its logs as they come,
// and the two things a reader may do to it: cancel it, or submit it again.

import * as api from "./api.js";
import { go, settings } from "./app.js";
import { clock, duration, fill, h, progressBar, secondsBetween, stateBadge, time } from "./dom.js";

/** Log lines kept on the page; older ones are removed as new ones come. */
const MAX_LINES = 5000;

const TERMINAL = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"]);

export async function render(main, { id }, signal) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const [{ job }, { traceUrl }] = await Promise.all([api.call("GET", path), settings]);
  const summary = h("section", { class: "job", "aria-live": "polite" });
  const actions = h("div", { class: "actions" });
  const notice = h("p", { role: "status", class: "notice" });
  const logs = h("ol", { class: "logs", "aria-label": "log lines" });
  const logStatus = h("p", { class: "muted", role: "status" });
  fill(main,
    h("h1", {}, "Job ", h("code", {}, job.id)),
    actions, notice, summary,
    h("h2", {}, "Logs"), logStatus, h("div", { class: "log-box" }, logs));
  let current = job;
  // The watch and the Cancel answer race: never let an older version of the job
  // replace a newer one.
  const update = (fresh) => {
    if (fresh !== job && Number(fresh.version) < Number(current.version)) return;
    current = fresh;
    fill(summary, details(fresh, traceUrl));
    fill(actions, buttons(fresh, path, notice, update));
  };
  update(job);

  // Live: the job's own watch (ends with its terminal state), and its logs.
  if (!TERMINAL.has(job.state)) {
    api.stream(`${path}:watch`, (result) => result?.job && update(result.job), signal)
      .catch((error) => {
        if (!signal.aborted) notice.textContent = `Live updates stopped: ${error.message}`;
      });
  }
  followLogs(path, logs, logStatus, !TERMINAL.has(current.state), signal);
}

function row(name, ...value) {
  return [h("dt", {}, name), h("dd", {}, ...value)];
}

function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value ?? null, null, 2));
}

/** What the job is and where it is. */
function details(job, traceUrl) {
  const queued = secondsBetween(job.createTime, job.startTime ?? job.finishTime);
  const ran = job.startTime ? secondsBetween(job.startTime, job.finishTime) : null;
  const labels = Object.entries(job.labels ?? {});
  return h("dl", {},
    row("Task", h("code", {}, job.task)),
    row("State", stateBadge(job.state), job.cancelRequested && !TERMINAL.has(job.state) ? " (cancel requested)" : ""),
    row("Progress", progressBar(job.progress?.percent, "progress"), " ",
      h("span", { class: "message" }, job.progress?.message ?? "")),
    row("Attempt", `${job.attempt} of ${job.maxAttempts}`),
    row("Priority", String(job.priority ?? 0)),
    row("Labels", labels.length
      ? h("ul", { class: "labels" }, labels.map(([k, v]) => h("li", {}, `${k}=${v}`)))
      : h("span", { class: "muted" }, "none")),
    row("Worker", job.workerId || h("span", { class: "muted" }, "none yet")),
    traceUrl && job.traceId && row("Trace", h("a", {
      href: traceUrl.replace("{trace_id}", encodeURIComponent(job.traceId)),
      target: "_blank",
      rel: "noopener noreferrer",
    }, `${job.traceId} ↗`)),
    row("Created", time(job.createTime)),
    row("Started", time(job.startTime)),
    row("Finished", time(job.finishTime)),
    row("Queue wait", duration(queued)),
    row("Run time", duration(ran)),
    row("Arguments", json(job.args)),
    job.result && row("Result", json(job.result)),
    job.error && row("Error", h("pre", { class: "error" }, job.error.message ?? "")));
}

/** Cancel (while it has not ended) and Resubmit. */
function buttons(job, path, notice, update) {
  const cancel = !TERMINAL.has(job.state) && h("button", {
    type: "button",
    class: "danger",
    onclick: async () => {
      if (!confirm(`Cancel job ${job.id} (${job.task})?`)) return;
      try {
        const { job: after } = await api.call("POST", `${path}:cancel`, {});
        update(after);
        notice.textContent = `Cancel requested: the job is ${after.state.replace("JOB_STATE_", "").toLowerCase()}.`;
      } catch (error) {
        notice.textContent = `Cancel refused: ${error.message}`;
      }
    },
  }, "Cancel");
  const resubmit = h("button", {
    type: "button",
    onclick: async () => {
      try {
        const { job: again } = await api.call("POST", "/v1/jobs", {
          task: job.task,
          args: job.args ?? {},
          labels: job.labels ?? {},
          priority: job.priority ?? 0,
          maxAttempts: job.maxAttempts,
          timeout: job.timeout ?? undefined,
        });
        go(`/ui/jobs/${encodeURIComponent(again.id)}`);
      } catch (error) {
        notice.textContent = `Resubmit refused: ${error.message}`;
      }
    },
  }, "Resubmit");
  return [cancel, resubmit];
}

/** Appends the job's log lines as they come (following while it runs). */
function followLogs(path, logs, status, follow, signal) {
  let count = 0;
  status.textContent = follow ? "Following…" : "";
  api.stream(`${path}/logs${api.query({ follow: follow ? "true" : "" })}`, (result) => {
    const entry = result?.entry;
    if (!entry) return;
    if (Number(entry.dropped) > 0) {
      logs.append(h("li", { class: "dropped" },
        `… ${entry.dropped} earlier lines were dropped (the job's log limit, or the worker printing faster than it may) …`));
    }
    logs.append(h("li", { class: `line ${String(entry.stream ?? "").toLowerCase()}`, dataset: { sequence: entry.sequence, time: entry.time ?? "" } },
      h("span", { class: "when" }, clock(entry.time)),
      h("span", { class: "text" }, entry.line + (entry.truncated ? " …(cut)" : ""))));
    count += 1;
    while (logs.children.length > MAX_LINES) logs.firstElementChild.remove();
    const box = logs.parentElement;
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
  }, signal).then(() => {
    status.textContent = count ? "" : "No log lines.";
  }).catch((error) => {
    if (!signal.aborted) status.textContent = `Logs stopped: ${error.message}`;
  });
}

// `/ui/` — the jobs of the tenant, newest first, filtered by state, task and
// labels (kept in the URL), a page at a time, with how many jobs are in each
// state, and kept live by one WatchJobs stream for the whole page (not one
// watch per row).

import * as api from "./api.js";
import { go } from "./app.js";
import { duration, fill, h, progressBar, secondsBetween, stateBadge, stateName, time } from "./dom.js";

const PAGE_SIZE = 50;
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
/** The counts are asked for again at most this often while jobs change. */
const COUNTS_EVERY_MS = 1000;

/** The filters of the URL. */
function filters() {
  const search = new URLSearchParams(location.search);
  return {
    state: search.get("state") ?? "",
    task: search.get("task") ?? "",
    labels: search.getAll("label"),
    page: search.get("page") ?? "",
  };
}

function stateParam(state) {
  return state ? `JOB_STATE_${state.toUpperCase()}` : "";
}

export async function render(main, _params, signal) {
  const wanted = filters();
  const form = filterForm(wanted);
  const rows = h("tbody");
  const status = h("p", { class: "muted", role: "status" });
  const table = h("table", { class: "jobs" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Job"),
      h("th", { scope: "col" }, "Task"),
      h("th", { scope: "col" }, "State"),
      h("th", { scope: "col" }, "Progress"),
      h("th", { scope: "col" }, "Created"),
      h("th", { scope: "col" }, "Duration"))),
    rows);
  const paging = h("nav", { class: "paging", "aria-label": "pages of jobs" });
  const counts = h("nav", { class: "counts", "aria-label": "jobs per state" });
  fill(main, h("h1", {}, "Jobs"), counts, form, status, h("div", { class: "scroll" }, table), paging);

  const listed = api.call("GET", `/v1/jobs${api.query({
    pageSize: PAGE_SIZE,
    pageToken: wanted.page,
    state: stateParam(wanted.state),
    task: wanted.task,
    labels: wanted.labels,
  })}`);
  const recount = counting(counts, wanted, signal);
  const page = await listed;
  const shown = new Map();
  for (const job of page.jobs ?? []) {
    const row = jobRow(job);
    shown.set(job.id, row);
    rows.append(row);
  }
  status.textContent = shown.size === 0 ? "No jobs match." : "";
  // When the first page is on screen, for measurements (tests/ui/volume.mjs).
  performance.mark("jobmesh:jobs-shown");
  fill(paging,
    wanted.page && h("a", { href: link({ ...wanted, page: "" }) }, "← Newest"),
    page.nextPageToken && h("a", { href: link({ ...wanted, page: page.nextPageToken }), rel: "next" }, "Older →"));
  ticking(rows, signal);

  // Live: every change of the tenant's matching jobs; new ones go on top of the
  // first page.
  api.stream(`/v1/jobs:watch${api.query({
    task: wanted.task,
    state: stateParam(wanted.state),
    labels: wanted.labels,
  })}`, (change) => {
    const job = change?.job;
    if (!job) return;
    const row = shown.get(job.id);
    if (row && Number(row.dataset.version) > Number(job.version)) return;
    if (!row || row.dataset.state !== job.state) recount();
    if (row) {
      const fresh = jobRow(job);
      // A keyboard user on this row keeps their place when it changes.
      const focused = row.contains(document.activeElement) ? document.activeElement : null;
      row.replaceWith(fresh);
      shown.set(job.id, fresh);
      if (focused) {
        const same = [...fresh.querySelectorAll("a")].find((a) => a.getAttribute("href") === focused.getAttribute("href"));
        same?.focus();
      }
    } else if (!wanted.page) {
      const fresh = jobRow(job);
      shown.set(job.id, fresh);
      rows.prepend(fresh);
      status.textContent = "";
      while (rows.children.length > PAGE_SIZE * 4) {
        shown.delete(rows.lastElementChild.dataset.id);
        rows.lastElementChild.remove();
      }
    }
  }, signal).catch((error) => {
    if (!signal.aborted) status.textContent = `Live updates stopped: ${error.message}. Reload to resume.`;
  });
}

/** The URL of the jobs page with `wanted` filters. */
function link(wanted) {
  return `/ui/${api.query({ state: wanted.state, task: wanted.task, label: wanted.labels, page: wanted.page })}`;
}

/** Shows how many jobs (of the task and labels filtered on) are in each state,
 *  each a link to the jobs in it; returns a function that asks for the counts
 *  again, at most once every COUNTS_EVERY_MS however often it is called. */
function counting(counts, wanted, signal) {
  const load = async () => {
    const answer = await api.call("GET", `/v1/jobs:count${api.query({ task: wanted.task, labels: wanted.labels })}`);
    if (signal.aborted) return;
    const links = (answer.counts ?? []).map((entry) => {
      const state = stateName(entry.state);
      const number = `${Number(entry.count ?? 0).toLocaleString()}${entry.atLeast ? "+" : ""}`;
      return h("a", {
          href: link({ ...wanted, state, page: "" }),
          class: `count state-${state}`,
          "aria-current": state === wanted.state ? "page" : null,
          dataset: { state },
        },
        h("span", { class: "count-state" }, state), " ", h("strong", {}, number));
    });
    fill(counts,
      h("a", { href: link({ ...wanted, state: "", page: "" }), class: "count", "aria-current": wanted.state ? null : "page" }, "all"),
      links);
  };
  const failed = (error) => {
    if (!signal.aborted) fill(counts, h("span", { class: "muted" }, `Counts unavailable: ${error.message}`));
  };
  load().catch(failed);
  let timer = null;
  signal.addEventListener("abort", () => clearTimeout(timer));
  return () => {
    if (timer !== null || signal.aborted) return;
    timer = setTimeout(() => {
      timer = null;
      load().catch(failed);
    }, COUNTS_EVERY_MS);
  };
}

function filterForm(wanted) {
  const state = h("select", { id: "filter-state", name: "state" },
    h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s, selected: s === wanted.state }, s)));
  const task = h("input", { id: "filter-task", name: "task", value: wanted.task, placeholder: "demo.sleep" });
  const label = h("input", { id: "filter-label", name: "label", value: wanted.labels.join(" "), placeholder: "team=vision" });
  return h("form", {
      class: "filters",
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        const labels = label.value.split(/\s+/).filter(Boolean);
        go(link({ state: state.value, task: task.value.trim(), labels, page: "" }));
      },
    },
    h("label", { for: "filter-state" }, "State"), state,
    h("label", { for: "filter-task" }, "Task"), task,
    h("label", { for: "filter-label" }, "Labels"), label,
    h("button", { type: "submit" }, "Filter"));
}

/** One job as a table row. */
function jobRow(job) {
  const running = job.state === "JOB_STATE_RUNNING";
  return h("tr", { dataset: { id: job.id, state: job.state, version: job.version } },
    h("td", { class: "id" }, h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    h("td", {}, job.task),
    h("td", {}, stateBadge(job.state)),
    h("td", { class: "progress" },
      progressBar(job.progress?.percent, `progress of ${job.id}`),
      h("span", { class: "message" }, job.progress?.message ?? "")),
    h("td", {}, time(job.createTime)),
    h("td", { class: "duration", dataset: running ? { since: job.startTime ?? "" } : {} },
      duration(secondsBetween(job.startTime, job.finishTime))));
}

/** Keeps the durations of running jobs moving, once a second. */
function ticking(rows, signal) {
  const timer = setInterval(() => {
    for (const cell of rows.querySelectorAll("td.duration[data-since]")) {
      if (cell.dataset.since) cell.textContent = duration(secondsBetween(cell.dataset.since));
    }
  }, 1000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

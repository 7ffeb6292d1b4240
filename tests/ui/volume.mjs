// The dashboard with real volumes (issue #12), in Debian's Chromium, against a
// running `jobmesh dev` whose database is JOBMESH_DATABASE (on the local
// PostgreSQL, user postgres):
//  1. 100 000 finished jobs of the tenant in the table: time from navigation to
//     the jobs page showing its first page of 50 rows (ROUNDS times, median),
//     beside the ListJobs call alone;
//  2. RUNNING jobs running at once (demo.sleep, progress every second), the
//     jobs page open: frames per second, long tasks and the updates it shows.
//
//   JOBMESH_GATEWAY_URL=… JOBMESH_TOKEN=… JOBMESH_DATABASE=… node volume.mjs
//
// Start the mesh with `jobmesh dev --worker-slots 200` for step 2. Prints the
// figures as one JSON object.

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

const GATEWAY = process.env.JOBMESH_GATEWAY_URL ?? "http://127.0.0.1:50051";
const TOKEN = process.env.JOBMESH_TOKEN;
const DATABASE = process.env.JOBMESH_DATABASE;
const TENANT = process.env.TENANT ?? "dev";
const JOBS = Number(process.env.JOBS ?? 100000);
const RUNNING = Number(process.env.RUNNING ?? 200);
const ROUNDS = Number(process.env.ROUNDS ?? 5);
if (!TOKEN || !DATABASE) {
  console.error("set JOBMESH_TOKEN (tenant dev) and JOBMESH_DATABASE");
  process.exit(2);
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

function sql(statement) {
  return execFileSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", DATABASE, "-qAtc", statement]).toString().trim();
}

// 1. Finished jobs, one a second over the past days: UUIDv7 ids by their time.
const existing = Number(sql(`SELECT count(*) FROM jobs WHERE tenant = '${TENANT}'`));
if (existing < JOBS) {
  sql(`INSERT INTO jobs (id, tenant, task, args, state, progress_percent, result, max_attempts,
         retry_initial_ms, retry_max_ms, retry_multiplier, retry_jitter, create_time, start_time, finish_time)
       SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7' || substr(md5(g::text), 1, 3)
               || '8' || substr(md5(g::text), 4, 15))::uuid,
              '${TENANT}', 'demo.echo', '{"n": 1}', 'succeeded', 100, '{"n": 1}', 3, 1000, 60000, 2, 0.2,
              t, t, t + interval '10 ms'
       FROM generate_series(1, ${JOBS - existing}) g,
            LATERAL (SELECT now() - interval '3 days' + g * interval '1 second' AS t) x`);
  sql("ANALYZE jobs");
}
const total = Number(sql(`SELECT count(*) FROM jobs WHERE tenant = '${TENANT}'`));

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium" });
const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
await context.addInitScript((t) => sessionStorage.setItem("jobmesh.token", t), TOKEN);

const firstPage = [];
const driven = [];
const listAlone = [];
const breakdowns = [];
for (let round = 0; round < ROUNDS; round++) {
  const page = await context.newPage();
  const t0 = Date.now();
  await page.goto(`${GATEWAY}/ui/`);
  await page.waitForSelector("table.jobs tbody tr:nth-child(50)");
  // From the start of the navigation to the rows being in the page, by the
  // browser's own clock (what the page's mark says; the driver's round trips
  // are not counted).
  const timings = await page.evaluate(() => {
    const at = (value) => Math.round(value);
    const resources = performance.getEntriesByType("resource");
    const list = resources.find((r) => new URL(r.name).pathname === "/v1/jobs");
    const files = resources.filter((r) => new URL(r.name).pathname.startsWith("/ui/"));
    return {
      shown: at(performance.getEntriesByName("jobmesh:jobs-shown")[0].startTime),
      html: at(performance.getEntriesByType("navigation")[0].responseEnd),
      files: at(Math.max(...files.map((r) => r.responseEnd))),
      list_start: at(list.startTime),
      list_end: at(list.responseEnd),
    };
  });
  firstPage.push(timings.shown);
  breakdowns.push(timings);
  driven.push(Date.now() - t0);
  const t1 = Date.now();
  const response = await fetch(`${GATEWAY}/v1/jobs?pageSize=50`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  await response.json();
  listAlone.push(Date.now() - t1);
  await page.close();
}

// Where the time of the median load went: the HTML, the last file under /ui/,
// and the ListJobs call, each from the start of the navigation.
const breakdown = breakdowns.find((b) => b.shown === median(firstPage));
if (RUNNING === 0) {
  await browser.close();
  console.log(JSON.stringify({ jobs_in_table: total, first_page_ms_median: median(firstPage), first_page_ms: firstPage,
    breakdown, first_page_as_driven_ms_median: median(driven), list_jobs_alone_ms_median: median(listAlone) }));
  process.exit(0);
}

// 2. Many jobs running at once, the jobs page open.
const submitted = [];
for (let n = 0; n < RUNNING; n++) {
  const response = await fetch(`${GATEWAY}/v1/jobs`, {
    method: "POST",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ task: "demo.sleep", args: { seconds: 40, steps: 40 } }),
  });
  submitted.push((await response.json()).job.id);
}
const page = await context.newPage();
await page.goto(`${GATEWAY}/ui/?state=running`);
await page.waitForSelector("table.jobs tbody tr");
await page.waitForTimeout(3000);
const live = await page.evaluate(async () => {
  let frames = 0;
  let longest = 0;
  let longTasks = 0;
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      longTasks += 1;
      longest = Math.max(longest, entry.duration);
    }
  });
  observer.observe({ type: "longtask", buffered: false });
  const rows = document.querySelector("table.jobs tbody");
  let replaced = 0;
  const mutations = new MutationObserver((records) => {
    for (const record of records) replaced += record.addedNodes.length;
  });
  mutations.observe(rows, { childList: true });
  const started = performance.now();
  await new Promise((resolve) => {
    const tick = () => {
      frames += 1;
      if (performance.now() - started < 10000) requestAnimationFrame(tick);
      else resolve();
    };
    requestAnimationFrame(tick);
  });
  observer.disconnect();
  mutations.disconnect();
  return {
    frames_per_second: frames / 10,
    long_tasks: longTasks,
    longest_task_ms: longest,
    row_updates_per_second: replaced / 10,
    rows_shown: rows.children.length,
  };
});
for (const id of submitted) {
  await fetch(`${GATEWAY}/v1/jobs/${id}:cancel`, {
    method: "POST",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: "{}",
  });
}
await browser.close();
console.log(JSON.stringify({
  jobs_in_table: total,
  first_page_ms_median: median(firstPage),
  first_page_ms: firstPage,
  breakdown,
  first_page_as_driven_ms_median: median(driven),
  list_jobs_alone_ms_median: median(listAlone),
  running: RUNNING,
  ...live,
}));

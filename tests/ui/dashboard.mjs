// The dashboard in a real browser: Debian's Chromium, headless, driven by
// playwright-core (no browser of its own), against a running `jobmesh dev`.
//
//   JOBMESH_GATEWAY_URL=http://127.0.0.1:50051 JOBMESH_TOKEN=… node dashboard.mjs
//
// JOBMESH_TOKEN is a token of the tenant the scenarios act as (jobs:submit,
// jobs:read, jobs:cancel, workers:read); OTHER_TOKEN, optional, one of another
// tenant. SCREENSHOTS=<dir> saves each page in light and dark mode there
// (docs/ui/ holds the committed ones). Prints one line per scenario, then
// "N passed, M failed"; exits non-zero when any failed.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const GATEWAY = process.env.JOBMESH_GATEWAY_URL ?? "http://127.0.0.1:50051";
const TOKEN = process.env.JOBMESH_TOKEN;
const OTHER_TOKEN = process.env.OTHER_TOKEN;
const BROWSER = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOTS = process.env.SCREENSHOTS;

if (!TOKEN) {
  console.error("set JOBMESH_TOKEN to a token with jobs:submit jobs:read jobs:cancel workers:read");
  process.exit(2);
}

/** Calls the REST API as `token`. */
async function api(method, path, body, token = TOKEN) {
  const response = await fetch(GATEWAY + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

const submit = async (request, token) => (await api("POST", "/v1/jobs", request, token)).job;
const getJob = async (id) => (await api("GET", `/v1/jobs/${id}`)).job;

async function until(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({ executablePath: BROWSER, headless: true });
const results = [];

/** Runs `body` with a fresh page signed in with `token` (or none). */
async function scenario(name, body, { token = TOKEN, colorScheme = "light" } = {}) {
  const context = await browser.newContext({ colorScheme, viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("dialog", (dialog) => dialog.accept());
  if (token) {
    await page.addInitScript((t) => sessionStorage.setItem("jobmesh.token", t), token);
  }
  try {
    await body(page);
    assert(problems.length === 0, problems.join("; "));
    results.push([name, null]);
    console.log(`ok - ${name}`);
  } catch (error) {
    results.push([name, error]);
    const shown = await page.textContent("main").catch(() => "");
    console.log(`not ok - ${name}: ${error.message}\n  the page showed: ${shown.replace(/\s+/g, " ").slice(0, 600)}`);
  } finally {
    await context.close();
  }
}

await scenario("the printed link signs in and the jobs page lists jobs from the API", async (page) => {
  const job = await submit({ task: "demo.echo", args: { from: "api" } });
  await page.addInitScript(() => sessionStorage.clear());
  await page.goto(`${GATEWAY}/ui/#token=${TOKEN}`);
  await page.waitForSelector(`tr[data-id="${job.id}"]`);
  assert(!page.url().includes("token="), `the token stayed in the address bar: ${page.url()}`);
  const stored = await page.evaluate(() => sessionStorage.getItem("jobmesh.token"));
  assert(stored === TOKEN, "the token was not kept for the tab");
});

await scenario("the jobs page counts jobs per state, and the counts follow the jobs", async (page) => {
  const run = `count-${Date.now()}`;
  const labels = { run };
  const first = [await submit({ task: "demo.echo", labels }), await submit({ task: "demo.echo", labels })];
  const fail = await submit({ task: "demo.fail", labels, maxAttempts: 1 });
  for (const job of [...first, fail]) {
    await until("the job ended", async () => ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"].includes((await getJob(job.id)).state));
  }
  await page.goto(`${GATEWAY}/ui/?label=run%3D${run}`);
  const count = (state) => page.$eval(`nav.counts a[data-state="${state}"] strong`, (e) => e.textContent).catch(() => null);
  await until("succeeded 2, failed 1", async () => (await count("succeeded")) === "2" && (await count("failed")) === "1");
  assert((await count("queued")) === "0" && (await count("cancelled")) === "0", "queued and cancelled are 0");
  // A job that ends while the page is open moves the counts, without a reload.
  await submit({ task: "demo.echo", labels });
  await until("succeeded 3 without a reload", async () => (await count("succeeded")) === "3");
  // Each count is a link to the jobs in that state.
  await page.click('nav.counts a[data-state="failed"]');
  await page.waitForURL((url) => url.searchParams.get("state") === "failed" && url.searchParams.get("label") === `run=${run}`);
  await page.waitForSelector(`tr[data-id="${fail.id}"]`);
  const states = await page.$$eval("table.jobs tbody tr", (rows) => rows.map((r) => r.dataset.state));
  assert(states.length === 1 && states[0] === "JOB_STATE_FAILED", `rows ${states}`);
});

await scenario("a new user opens the printed link, follows a job's logs, cancels it and submits another", async (page) => {
  // The very link `jobmesh dev` printed (.ci/run reads it from its output).
  const link = process.env.DASHBOARD_LINK || `${GATEWAY}/ui/#token=${TOKEN}`;
  await page.addInitScript(() => sessionStorage.clear());
  await page.goto(link);
  await page.waitForSelector("table.jobs");
  await page.click("nav a[data-page=submit]");
  await page.fill("#task", "demo.logs");
  await page.fill("#args", JSON.stringify({ lines: 600, interval_ms: 100, width: 40 }));
  await page.click("form.submit button[type=submit]");
  await page.waitForURL((url) => url.pathname.startsWith("/ui/jobs/"));
  const first = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
  await page.waitForFunction(() => document.querySelectorAll("ol.logs li.line").length >= 3, null, { timeout: 15000 });
  await page.waitForSelector(".job .state-running");
  await page.click("button.danger");
  await page.waitForSelector(".job .state-cancelled", { timeout: 15000 });
  await page.click("nav a[data-page=jobs]");
  await page.waitForSelector(`tr[data-id="${first}"][data-state="JOB_STATE_CANCELLED"]`);
  await page.click("nav a[data-page=submit]");
  await page.fill("#task", "demo.echo");
  await page.fill("#args", '{"hello": "again"}');
  await page.click("form.submit button[type=submit]");
  await page.waitForURL((url) => url.pathname.startsWith("/ui/jobs/") && !url.pathname.endsWith(first));
  const second = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
  await page.waitForSelector(".job .state-succeeded", { timeout: 15000 });
  // Checked through the API, as the link's own tenant.
  const linkToken = new URLSearchParams(new URL(link).hash.slice(1)).get("token");
  const asUser = async (id) => (await api("GET", `/v1/jobs/${id}`, undefined, linkToken)).job;
  assert((await asUser(first)).state === "JOB_STATE_CANCELLED", "the first job is not CANCELLED in the API");
  const again = await asUser(second);
  assert(again.state === "JOB_STATE_SUCCEEDED" && again.args.hello === "again", `the second job: ${JSON.stringify(again)}`);
}, { token: null });

await scenario("a running job's progress bar moves without a reload", async (page) => {
  await page.goto(`${GATEWAY}/ui/`);
  await page.waitForSelector("table.jobs");
  const job = await submit({ task: "demo.sleep", args: { seconds: 4, steps: 8 } });
  const row = `tr[data-id="${job.id}"]`;
  await page.waitForSelector(row);
  const first = await until("progress", async () => {
    const value = await page.$eval(`${row} progress`, (p) => p.value).catch(() => 0);
    return value > 0 && value < 100 ? value : null;
  });
  await until("more progress", async () =>
    (await page.$eval(`${row} progress`, (p) => p.value)) > first);
  await page.waitForSelector(`${row}[data-state="JOB_STATE_SUCCEEDED"]`, { timeout: 15000 });
});

await scenario("the job page shows a log line within a second of the worker printing it", async (page) => {
  const job = await submit({ task: "demo.logs", args: { lines: 4, interval_ms: 1500 } });
  await page.goto(`${GATEWAY}/ui/jobs/${job.id}`);
  await page.waitForSelector("ol.logs li.line");
  // The second line is printed while the page follows.
  await page.waitForFunction(() => document.querySelectorAll("ol.logs li.line").length >= 2, null, { timeout: 10000 });
  const lag = await page.evaluate(() => {
    const line = document.querySelectorAll("ol.logs li.line")[1];
    return Date.now() - Date.parse(line.dataset.time);
  });
  assert(lag < 1000, `the line showed ${lag} ms after it was printed`);
});

await scenario("Cancel ends a running job CANCELLED", async (page) => {
  const job = await submit({ task: "demo.sleep", args: { seconds: 60, steps: 60 } });
  await until("the job running", async () => (await getJob(job.id)).state === "JOB_STATE_RUNNING");
  await page.goto(`${GATEWAY}/ui/jobs/${job.id}`);
  await page.click("button.danger");
  await until("CANCELLED through the API", async () => (await getJob(job.id)).state === "JOB_STATE_CANCELLED");
  await page.waitForSelector(".state-cancelled");
});

await scenario("Resubmit creates a new job with the same task and args", async (page) => {
  const job = await submit({ task: "demo.echo", args: { n: 7, words: ["a", "b"] }, labels: { team: "ui" } });
  await page.goto(`${GATEWAY}/ui/jobs/${job.id}`);
  await page.click("text=Resubmit");
  await page.waitForURL((url) => url.pathname.startsWith("/ui/jobs/") && !url.pathname.endsWith(job.id));
  const id = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
  const again = await getJob(id);
  assert(again.id !== job.id, "no new job");
  assert(again.task === job.task, `task ${again.task}`);
  assert(JSON.stringify(again.args) === JSON.stringify(job.args), `args ${JSON.stringify(again.args)}`);
});

await scenario("the submit form refuses malformed JSON before sending and shows API errors by their field", async (page) => {
  const before = (await api("GET", "/v1/jobs?pageSize=1")).jobs?.[0]?.id;
  await page.goto(`${GATEWAY}/ui/submit`);
  await page.fill("#task", "demo.echo");
  await page.fill("#args", "{not json");
  await page.click("button[type=submit]");
  await page.waitForSelector("#args-error:not(:empty)");
  const after = (await api("GET", "/v1/jobs?pageSize=1")).jobs?.[0]?.id;
  assert(before === after, "a job was created from malformed JSON");
  assert(page.url().endsWith("/ui/submit"), "the page left the form");
  await page.fill("#args", "{}");
  await page.fill("#task", "not a task");
  await page.click("button[type=submit]");
  const error = await page.waitForSelector("#task-error:not(:empty)");
  const text = await error.textContent();
  assert(text.startsWith("task:") && text.includes("is not a task name"), `task error: ${text}`);
});

await scenario("hostile args, results and log lines render as text", async (page) => {
  const hostile = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";
  const job = await submit({ task: "demo.logs", args: { lines: 2, text: hostile, note: hostile } });
  await until("the job done", async () => (await getJob(job.id)).state === "JOB_STATE_SUCCEEDED");
  await page.goto(`${GATEWAY}/ui/jobs/${job.id}`);
  await page.waitForSelector("ol.logs li.line");
  const seen = await page.evaluate(() => ({
    pwned: window.__pwned ?? null,
    images: document.querySelectorAll("main img").length,
    scripts: document.querySelectorAll("main script").length,
    line: document.querySelector("ol.logs li.line .text").textContent,
    args: document.querySelector("pre.json").textContent,
  }));
  assert(seen.pwned === null, "a script ran");
  assert(seen.images === 0 && seen.scripts === 0, "an element was created from data");
  assert(seen.line.includes(hostile), `the line shows ${seen.line}`);
  assert(seen.args.includes("<img src=x"), "the args are not shown as text");
});

await scenario("a wrong token shows the sign-in page with the reason", async (page) => {
  await page.goto(`${GATEWAY}/ui/`);
  const form = await page.waitForSelector("form.sign-in");
  const reason = await page.textContent("form.sign-in .error");
  assert(reason.includes("The token was refused"), `no reason: ${reason}`);
  assert(await form.isVisible(), "the form is hidden");
}, { token: "not-a-jwt" });

await scenario("another tenant's job URL shows not found", async (page) => {
  assert(OTHER_TOKEN, "set OTHER_TOKEN to a token of another tenant");
  const theirs = await submit({ task: "demo.echo" }, OTHER_TOKEN);
  await page.goto(`${GATEWAY}/ui/jobs/${theirs.id}`);
  const problem = await page.waitForSelector(".problem h1");
  const text = await problem.textContent();
  assert(text.startsWith("404") && text.includes("not found"), `shows: ${text}`);
});

await scenario("the workers page shows the dev worker and its slots", async (page) => {
  await page.goto(`${GATEWAY}/ui/workers`);
  const row = await page.waitForSelector("tr[data-worker]");
  const text = await row.textContent();
  assert(/\d+ \/ \d+/.test(text), `no slots in ${text}`);
  assert(text.includes("demo.sleep"), `no tasks in ${text}`);
});

await scenario("a job links to its trace, and the trace is there", async (page) => {
  const settings = await (await fetch(`${GATEWAY}/ui/config.json`)).json();
  assert(settings.traceUrl, "start the gateway with --ui-trace-url (and an OTLP endpoint: .ci/run uses tests' trace-sink)");
  const job = await submit({ task: "demo.echo", args: { traced: true } });
  assert(/^[0-9a-f]{32}$/.test(job.traceId ?? ""), `the job has no trace id (${job.traceId}): is OTEL_EXPORTER_OTLP_ENDPOINT set?`);
  const want = settings.traceUrl.replace("{trace_id}", job.traceId);
  // The mesh exports spans in batches: wait until the trace viewer has the job's.
  await until("the job's spans, the worker's too, at the trace viewer", async () => {
    const response = await fetch(want);
    return response.ok && (await response.text()).includes("demo.echo execute");
  }, 20000);
  await page.goto(`${GATEWAY}/ui/jobs/${job.id}`);
  const link = await page.waitForSelector(`a[href="${want}"]`);
  const [viewer] = await Promise.all([page.context().waitForEvent("page"), link.click()]);
  await viewer.waitForLoadState();
  const shown = await viewer.textContent("body");
  // The gateway's submit span and the worker's execution, in the one trace, and
  // jobmesh dev (one process) exports each component as its own service.
  assert(shown.includes(`trace ${job.traceId}`), `the trace page showed ${shown}`);
  for (const line of [
    "jobmesh-gateway POST /v1/jobs",
    "jobmesh-gateway jobmesh.v1.JobService/SubmitJob",
    "jobmesh-job-store jobmesh.internal.v1.JobStoreService/CreateJob",
    "jobmesh-dispatcher process ",
    "jobmesh-worker demo.echo execute",
  ]) {
    assert(shown.includes(line), `the trace holds no "${line}": ${shown}`);
  }
});

await scenario("the pages answer with a Content-Security-Policy that forbids inline script and framing", async (page) => {
  const response = await page.goto(`${GATEWAY}/ui/`);
  const policy = response.headers()["content-security-policy"] ?? "";
  assert(policy.includes("default-src 'self'") && policy.includes("frame-ancestors 'none'"), policy);
  assert(!policy.includes("unsafe-inline"), policy);
});

await scenario("on a phone-sized screen nothing spills sideways and a job opens from the keyboard", async (page) => {
  await page.setViewportSize({ width: 390, height: 844 });
  const job = await submit({ task: "demo.sleep", args: { seconds: 1.5, steps: 3, long: "x".repeat(300) } });
  await page.goto(`${GATEWAY}/ui/`);
  await page.waitForSelector(`tr[data-id="${job.id}"]`);
  const spill = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(spill <= 0, `the page is ${spill} px wider than the screen`);
  // Focused while the job runs; its row changes under the focus before Enter.
  await page.focus(`tr[data-id="${job.id}"] td.id a`);
  await page.waitForSelector(`tr[data-id="${job.id}"][data-state="JOB_STATE_SUCCEEDED"]`);
  await page.keyboard.press("Enter");
  await page.waitForURL(`**/ui/jobs/${job.id}`);
  await page.waitForSelector("pre.json");
  const spillJob = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(spillJob <= 0, `the job page is ${spillJob} px wider than the screen`);
});

await scenario("the sign-in form works from the keyboard alone", async (page) => {
  await page.goto(`${GATEWAY}/ui/workers`);
  await page.waitForSelector("form.sign-in");
  await page.keyboard.type(TOKEN);
  await page.keyboard.press("Enter");
  await page.waitForSelector("tr[data-worker]");
}, { token: null });

if (SCREENSHOTS) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await submit({ task: "demo.sleep", args: { seconds: 30, steps: 30 }, labels: { team: "vision" } });
  const running = await submit({ task: "demo.logs", args: { lines: 300, interval_ms: 100, width: 60 }, labels: { team: "vision" } });
  await until("a running job", async () => (await getJob(running.id)).state === "JOB_STATE_RUNNING");
  await new Promise((r) => setTimeout(r, 3000));
  for (const colorScheme of ["light", "dark"]) {
    await scenario(`screenshots (${colorScheme})`, async (page) => {
      for (const [name, path] of [["jobs", "/ui/"], ["job", `/ui/jobs/${running.id}`], ["workers", "/ui/workers"], ["submit", "/ui/submit"]]) {
        await page.goto(GATEWAY + path);
        await page.waitForTimeout(800);
        await page.screenshot({ path: `${SCREENSHOTS}/${name}-${colorScheme}.png`, fullPage: false });
      }
    }, { colorScheme });
  }
  await api("POST", `/v1/jobs/${running.id}:cancel`, {});
}

await browser.close();
const failed = results.filter(([, error]) => error).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

// What .ci/run runs against `jobmesh dev`: the example client end to end, from
// the proto alone. Prints "N passed, M failed"; exits non-zero on a failure.

import { execFileSync } from "node:child_process";
import { deepStrictEqual } from "node:assert";
import { connect, fromStruct, toStruct } from "./jobmesh.mjs";

const results = [];
async function check(name, body) {
  try {
    await body();
    results.push(true);
    console.log(`ok   ${name}`);
  } catch (error) {
    results.push(false);
    console.log(`FAIL ${name}: ${error.message}`);
  }
}
function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const client = connect(process.env.JOBMESH_GATEWAY ?? "127.0.0.1:50051", process.env.JOBMESH_TOKEN);

await check("the example watches a job with progress to success", async () => {
  const out = execFileSync(process.execPath, [new URL("./submit_and_watch.mjs", import.meta.url).pathname,
    "demo.sleep", '{"seconds": 2, "steps": 4}'], { env: process.env, encoding: "utf8" });
  assert(/^RUNNING +[1-9][0-9]*%/m.test(out), `no progress in:\n${out}`);
  assert(/^SUCCEEDED/m.test(out), `no success in:\n${out}`);
});

await check("args and results round-trip through Struct", async () => {
  const args = { n: 3, words: ["a", "b"], nested: { ok: true, none: null } };
  const { job } = await client.submitJob({ task: "demo.echo", args: toStruct(args) });
  let last = job;
  for await (const { job: now } of client.watchJob({ jobId: job.id })) last = now;
  assert(last.state === "JOB_STATE_SUCCEEDED", last.state);
  // Same values; PostgreSQL's jsonb keeps the keys in its own order.
  deepStrictEqual(fromStruct(last.result), args);
});

await check("a bad request is refused with its code and the field named", async () => {
  try {
    await client.submitJob({ task: "not a task" });
    throw new Error("accepted");
  } catch (error) {
    assert(error.code === 3, `code ${error.code}`);
    assert(error.details.startsWith("task: "), error.details);
    assert(error.metadata.get("grpc-status-details-bin").length === 1, "no google.rpc details");
  }
});

await check("the tasks of the dev worker are listed", async () => {
  const { tasks } = await client.listTasks({});
  assert(tasks.some((t) => t.name === "demo.sleep"), JSON.stringify(tasks));
});

client.close();
const passed = results.filter(Boolean).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exitCode = passed === results.length ? 0 : 1;

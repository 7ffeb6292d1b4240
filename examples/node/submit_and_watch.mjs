// Submit a job and watch it until it ends:
//
//   JOBMESH_GATEWAY=127.0.0.1:50051 JOBMESH_TOKEN=… node submit_and_watch.mjs demo.sleep '{"seconds": 2, "steps": 4}'
//
// Exit status: 0 if it SUCCEEDED, 1 if it ended otherwise, 2 on a gRPC error.

import { connect, fromStruct, toStruct } from "./jobmesh.mjs";

const [task = "demo.sleep", args = "{}"] = process.argv.slice(2);
const client = connect(process.env.JOBMESH_GATEWAY ?? "127.0.0.1:50051", process.env.JOBMESH_TOKEN);
try {
  const { job } = await client.submitJob({ task, args: toStruct(JSON.parse(args)) });
  console.log(`submitted ${job.id} (${job.task})`);
  let last = job;
  for await (const { job: now } of client.watchJob({ jobId: job.id })) {
    last = now;
    console.log(`${now.state.replace("JOB_STATE_", "").padEnd(10)} ${String(now.progress?.percent ?? 0).padStart(3)}%  ${now.progress?.message ?? ""}`);
  }
  if (last.state === "JOB_STATE_SUCCEEDED") {
    console.log("result", JSON.stringify(fromStruct(last.result)));
    process.exitCode = 0;
  } else {
    console.log("error", last.error?.message ?? "");
    process.exitCode = 1;
  }
} catch (error) {
  console.error(`gRPC error ${error.code}: ${error.details}`);
  process.exitCode = 2;
} finally {
  client.close();
}

// A jobmesh client for Node.js written from the proto alone, with
// @grpc/grpc-js and @grpc/proto-loader. What it needs to know:
//
// - Include paths: `proto/` (our files) and `proto/third_party/googleapis`
//   (google/api/annotations.proto, which the REST annotations import). The
//   well-known types (google/protobuf/struct.proto, timestamp, duration) come
//   with protobufjs. Load only the public files, jobmesh/v1/*.proto: the
//   internal API (jobmesh/internal) is not served by the gateway.
// - `args` and `result` are google.protobuf.Struct: on the wire a map of typed
//   values, so plain objects go through `toStruct` / `fromStruct`. Numbers are
//   doubles (3 arrives as 3).
// - The token goes in `authorization: Bearer <token>` metadata.
// - int64 fields (`version`) come as strings with `longs: String`.

import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO = path.resolve(here, "../../proto");

const definition = protoLoader.loadSync(
  ["jobmesh/v1/job_service.proto", "jobmesh/v1/task_service.proto"],
  {
    includeDirs: [PROTO, path.join(PROTO, "third_party/googleapis")],
    keepCase: false, // fields in lowerCamelCase: jobId, pageSize
    longs: String,
    enums: String, // states by name: "JOB_STATE_RUNNING"
    defaults: true,
    oneofs: true,
  },
);
const v1 = grpc.loadPackageDefinition(definition).jobmesh.v1;

/** A plain JSON value as a google.protobuf.Value. */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}

/** A plain object as a google.protobuf.Struct. */
export function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object ?? {}).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(value) {
  switch (value?.kind) {
    case "numberValue": return value.numberValue;
    case "stringValue": return value.stringValue;
    case "boolValue": return value.boolValue;
    case "structValue": return fromStruct(value.structValue);
    case "listValue": return (value.listValue.values ?? []).map(fromValue);
    default: return null;
  }
}

/** A google.protobuf.Struct as a plain object. */
export function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

/** Clients of JobService and TaskService at `address`, sending `token`. */
export function connect(address, token) {
  const credentials = grpc.credentials.createInsecure();
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  const jobs = new v1.JobService(address, credentials);
  const tasks = new v1.TaskService(address, credentials);
  const unary = (client, method) => (request) =>
    new Promise((resolve, reject) =>
      client[method](request, metadata, { deadline: Date.now() + 30000 }, (error, reply) =>
        (error ? reject(error) : resolve(reply))));
  return {
    submitJob: unary(jobs, "SubmitJob"),
    getJob: unary(jobs, "GetJob"),
    listJobs: unary(jobs, "ListJobs"),
    cancelJob: unary(jobs, "CancelJob"),
    listTasks: unary(tasks, "ListTasks"),
    /** A readable stream of WatchJobResponse messages. */
    watchJob: (request) => jobs.WatchJob(request, metadata),
    close: () => { jobs.close(); tasks.close(); },
  };
}

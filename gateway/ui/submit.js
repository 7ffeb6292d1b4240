// `/ui/submit` — submit a job. The args are checked as JSON before anything is
// sent; the API's refusals are shown next to the field they name.

import * as api from "./api.js";
import { go } from "./app.js";
import { fill, h } from "./dom.js";

/** Form fields, by the name the API's messages start with. */
const FIELDS = ["task", "args", "labels", "priority", "max_attempts", "timeout", "schedule_time"];

export async function render(main) {
  let tasks = [];
  try {
    tasks = (await api.call("GET", "/v1/tasks")).tasks ?? [];
  } catch {
    // The form works without the list (a token without jobs:read on tasks).
  }
  const input = (name, attrs) => h("input", { id: name, name, "aria-describedby": `${name}-error`, ...attrs });
  const fields = {
    task: input("task", { required: true, list: "task-names", placeholder: "demo.sleep", autocomplete: "off" }),
    args: h("textarea", { id: "args", name: "args", rows: 6, "aria-describedby": "args-error", spellcheck: false }, "{}"),
    labels: input("labels", { placeholder: "team=vision env=dev" }),
    priority: input("priority", { type: "number", min: -1000, max: 1000, value: "0" }),
    max_attempts: input("max_attempts", { type: "number", min: 0, max: 100, placeholder: "3" }),
    timeout: input("timeout", { type: "number", min: 1, placeholder: "seconds" }),
    schedule_time: input("schedule_time", { type: "datetime-local" }),
  };
  const errors = Object.fromEntries(FIELDS.map((name) =>
    [name, h("p", { id: `${name}-error`, class: "field-error", role: "alert" })]));
  const general = h("p", { class: "error", role: "alert" });
  const labelOf = {
    task: "Task", args: "Arguments (a JSON object)", labels: "Labels (key=value, separated by spaces)",
    priority: "Priority", max_attempts: "Max attempts", timeout: "Timeout (seconds)",
    schedule_time: "Start at (your local time)",
  };
  const form = h("form", { class: "submit", novalidate: true, onsubmit: (event) => {
      event.preventDefault();
      send(fields, errors, general);
    } },
    h("datalist", { id: "task-names" }, tasks.map((t) => h("option", { value: t.name }))),
    FIELDS.map((name) => h("div", { class: "field" },
      h("label", { for: name }, labelOf[name]), fields[name], errors[name])),
    general,
    h("button", { type: "submit" }, "Submit"));
  fill(main, h("h1", {}, "Submit a job"), form);
  fields.task.focus();
}

async function send(fields, errors, general) {
  for (const error of Object.values(errors)) error.textContent = "";
  general.textContent = "";
  let args;
  try {
    args = JSON.parse(fields.args.value || "{}");
    if (args === null || typeof args !== "object" || Array.isArray(args)) {
      throw new Error("it must be a JSON object, like {\"seconds\": 3}");
    }
  } catch (error) {
    errors.args.textContent = `Not valid: ${error.message}. Nothing was sent.`;
    fields.args.focus();
    return;
  }
  const labels = {};
  for (const pair of fields.labels.value.split(/\s+/).filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at <= 0) {
      errors.labels.textContent = `"${pair}" is not key=value. Nothing was sent.`;
      return;
    }
    labels[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const request = {
    task: fields.task.value.trim(),
    args,
    labels,
    priority: Number(fields.priority.value || 0),
  };
  if (fields.max_attempts.value) request.maxAttempts = Number(fields.max_attempts.value);
  if (fields.timeout.value) request.timeout = `${Number(fields.timeout.value)}s`;
  if (fields.schedule_time.value) request.scheduleTime = new Date(fields.schedule_time.value).toISOString();
  try {
    const { job } = await api.call("POST", "/v1/jobs", request);
    go(`/ui/jobs/${encodeURIComponent(job.id)}`);
  } catch (error) {
    // The API names the field in its BadRequest detail ("task", "args").
    const field = FIELDS.find((name) => error.field === name);
    if (field) {
      errors[field].textContent = error.message;
      fields[field].focus();
    } else {
      general.textContent = error.message;
    }
  }
}

// `/ui/workers` — tasks with their queues and slots, and the connected workers
// with what they offer and hold. Read again every two seconds while shown.

import * as api from "./api.js";
import { fill, h, time } from "./dom.js";

const REFRESH_MS = 2000;

export async function render(main, _params, signal) {
  const tasks = h("tbody");
  const workers = h("tbody");
  const status = h("p", { class: "muted", role: "status" });
  fill(main,
    h("h1", {}, "Workers"), status,
    h("h2", {}, "Tasks"),
    h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {},
        ["Task", "Queued", "Workers", "Slots busy", "Slots free"].map((c) => h("th", { scope: "col" }, c)))),
      tasks)),
    h("h2", {}, "Connected workers"),
    h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {},
        ["Worker", "Tasks", "Slots busy / all", "Jobs held", "Connected since", "Last seen"].map((c) => h("th", { scope: "col" }, c)))),
      workers)));
  const refresh = async () => {
    const [taskList, workerList] = await Promise.all([
      api.call("GET", "/v1/tasks"),
      api.call("GET", "/v1/workers"),
    ]);
    fill(tasks, (taskList.tasks ?? []).map((t) => h("tr", {},
      h("td", {}, h("a", { href: `/ui/?task=${encodeURIComponent(t.name)}` }, t.name)),
      h("td", {}, String(t.queueDepth ?? 0)),
      h("td", {}, String(t.workers ?? 0)),
      h("td", {}, String((t.slots ?? 0) - (t.freeSlots ?? 0))),
      h("td", {}, String(t.freeSlots ?? 0)))));
    fill(workers, (workerList.workers ?? []).map((w) => h("tr", { dataset: { worker: w.workerId } },
      h("td", {}, h("code", {}, w.workerId)),
      h("td", {}, (w.tasks ?? []).join(", ")),
      h("td", {}, `${w.slotsInUse ?? 0} / ${w.slots ?? 0}`),
      h("td", {}, (w.jobIds ?? []).length
        ? h("ul", { class: "held" }, w.jobIds.map((id) => h("li", {}, h("a", { href: `/ui/jobs/${encodeURIComponent(id)}` }, id))))
        : h("span", { class: "muted" }, "none")),
      h("td", {}, time(w.connectTime)),
      h("td", {}, time(w.lastSeenTime)))));
    if (!(workerList.workers ?? []).length) status.textContent = "No worker is connected.";
    else status.textContent = "";
  };
  await refresh();
  const timer = setInterval(() => {
    refresh().catch((error) => {
      status.textContent = `Could not refresh: ${error.message}`;
    });
  }, REFRESH_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}

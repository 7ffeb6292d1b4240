// Building the page from data without ever parsing data as HTML: every string
// becomes a text node, so args, results, messages and log lines from users show
// as the characters they are.

/** An element `tag` with `attrs` (properties, `on*` listeners) and `children`
 *  (nodes, strings as text, arrays flattened, null and false skipped). */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name in element && typeof value !== "string") {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.append(child);
    else element.append(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A job state without its prefix: `JOB_STATE_RUNNING` → `running`. */
export function stateName(state) {
  return String(state ?? "").replace(/^JOB_STATE_/, "").toLowerCase();
}

/** A badge showing a job state. */
export function stateBadge(state) {
  const name = stateName(state);
  return h("span", { class: `state state-${name}` }, name);
}

/** A progress bar for `percent` (0 to 100). */
export function progressBar(percent, label) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  return h("progress", { max: 100, value, "aria-label": label ?? `${value}%` }, `${value}%`);
}

/** Seconds between two RFC 3339 times (the second one defaults to now). */
export function secondsBetween(from, to) {
  if (!from) return null;
  const end = to ? Date.parse(to) : Date.now();
  return Math.max(0, (end - Date.parse(from)) / 1000);
}

/** A duration in seconds, short: `0.4 s`, `12 s`, `3 min 4 s`, `2 h 5 min`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** The reader's local date and time format, made once (making one per row is
 *  what `toLocaleString` would do, and it shows in a page of 50 rows). */
const LOCAL_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

/** A time as the reader's local date and time, with the exact value on hover. */
export function time(value) {
  if (!value) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: value, title: value }, LOCAL_TIME.format(new Date(value)));
}

const LOCAL_CLOCK = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

/** The time of day of `value` (a log line's), in the reader's format. */
export function clock(value) {
  return value ? LOCAL_CLOCK.format(new Date(value)) : "";
}

// The REST API, the same routes a script calls (docs/rest.md), with the token
// the reader signed in with. Nothing here talks to the server any other way.

const TOKEN_KEY = "jobmesh.token";

/** The bearer token of this tab, if signed in. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signIn(value) {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal of the API: the HTTP status and the gRPC code, message and
 *  details of its body ({"code", "message", "details"}). */
export class ApiError extends Error {
  constructor(status, code, message, details = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = Array.isArray(details) ? details : [];
  }

  /** The field a BadRequest detail names, if any (`task`, `max_attempts`). */
  get field() {
    const bad = this.details.find((d) => d?.["@type"]?.endsWith("google.rpc.BadRequest"));
    return bad?.fieldViolations?.[0]?.field ?? null;
  }

  /** The ErrorInfo reason (`JOB_NOT_FOUND`, `TOKEN_EXPIRED`), if any. */
  get reason() {
    return this.details.find((d) => d?.["@type"]?.endsWith("google.rpc.ErrorInfo"))?.reason ?? null;
  }
}

function headers(extra = {}) {
  const all = { ...extra };
  const bearer = token();
  if (bearer) all.Authorization = `Bearer ${bearer}`;
  return all;
}

async function refusal(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const error = body?.error ?? body;
  return new ApiError(
    response.status,
    error?.code ?? 0,
    error?.message ?? `${response.status} ${response.statusText}`,
    error?.details,
  );
}

/** Calls `method path` with `body` (JSON) and returns the reply's JSON. */
export async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await refusal(response);
  return response.json();
}

/** Reads a newline-delimited JSON stream from `path`, calling `onResult` with each
 *  line's `result` until the stream ends, `signal` aborts it or an `error` line
 *  comes (thrown as an ApiError). */
export async function stream(path, onResult, signal) {
  const response = await fetch(path, { headers: headers(), signal });
  if (!response.ok) throw await refusal(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += value;
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      if (!line) continue;
      const message = JSON.parse(line);
      if (message.error) {
        throw new ApiError(200, message.error.code, message.error.message, message.error.details);
      }
      onResult(message.result);
    }
  }
}

/** A query string from `params`, leaving out empty values; arrays repeat the key. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(key, item);
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

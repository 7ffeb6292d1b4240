// The dashboard's shell: sign-in, the router (one URL per page, so links can be
// shared), and what every page has in common. Pages live in their own modules
// and are handed the main element, their parameters and an AbortSignal that
// fires when the reader leaves them (closing their streams).

import * as api from "./api.js";
import { fill, h } from "./dom.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as workers from "./workers.js";
import * as submit from "./submit.js";

const main = document.getElementById("main");

/** What the gateway tells the pages (`/ui/config.json`): `traceUrl`, with
 *  `{trace_id}` in it, or null. */
export const settings = fetch("/ui/config.json")
  .then((response) => (response.ok ? response.json() : {}))
  .catch(() => ({}));
let leaving = new AbortController();

/** The page for a path under /ui/, and its parameters. */
function route(path) {
  const match = path.match(/^\/ui\/jobs\/([^/]+)$/);
  if (match) return { page: job, name: "jobs", params: { id: decodeURIComponent(match[1]) } };
  if (path === "/ui/workers") return { page: workers, name: "workers", params: {} };
  if (path === "/ui/submit") return { page: submit, name: "submit", params: {} };
  return { page: jobs, name: "jobs", params: {} };
}

/** Shows the page of the current URL. */
export async function show() {
  leaving.abort();
  leaving = new AbortController();
  const { page, name, params } = route(location.pathname);
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("sign-out").hidden = !api.token();
  if (!api.token()) return signInPage();
  try {
    await page.render(main, params, leaving.signal);
  } catch (error) {
    if (leaving.signal.aborted) return;
    failure(error);
  }
}

/** Goes to `url` (a path under /ui/) without reloading. */
export function go(url) {
  history.pushState(null, "", url);
  show();
}

/** What the reader sees when a page cannot be shown: the API's own words, and
 *  what to do about them. */
export function failure(error) {
  if (error instanceof api.ApiError && error.status === 401) {
    return signInPage(error.message);
  }
  const advice =
    error instanceof api.ApiError && error.status === 403
      ? "Your token lacks the scope named above: ask for a token with it (jobmesh token --scope …), then sign in again."
      : null;
  fill(
    main,
    h("section", { class: "problem", role: "alert" },
      h("h1", {}, error instanceof api.ApiError ? `${error.status}: ${error.message}` : String(error)),
      advice && h("p", {}, advice),
      h("p", {}, h("a", { href: "/ui/" }, "Back to the jobs"))),
  );
}

/** Asks for a bearer token, saying why when a token was refused. */
function signInPage(reason) {
  api.signOut();
  document.getElementById("sign-out").hidden = true;
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    placeholder: "eyJ…",
    "aria-describedby": "token-help",
  });
  const form = h("form", {
      class: "sign-in",
      onsubmit: (event) => {
        event.preventDefault();
        api.signIn(input.value);
        show();
      },
    },
    h("h1", {}, "Sign in"),
    reason && h("p", { class: "error", role: "alert" }, `The token was refused: ${reason}`),
    h("label", { for: "token" }, "Bearer token"),
    input,
    h("p", { id: "token-help", class: "muted" },
      "A JWT with the scopes jobs:read (and jobs:submit, jobs:cancel, workers:read to do more). ",
      "`jobmesh dev` prints a link that signs you in; `jobmesh token` makes one. ",
      "The token stays in this tab only (sessionStorage)."),
    h("button", { type: "submit" }, "Sign in"));
  fill(main, form);
  input.focus();
}

function start() {
  // `#token=…` (the link `jobmesh dev` prints): the fragment never reaches the
  // server; keep the token for this tab and take it out of the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    api.signIn(fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  document.getElementById("sign-out").addEventListener("click", () => {
    api.signOut();
    show();
  });
  // Links inside the dashboard change the page without a reload.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a");
    if (!link || link.target || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const url = new URL(link.href, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith("/ui/")) return;
    event.preventDefault();
    go(url.pathname + url.search);
  });
  window.addEventListener("popstate", show);
  show();
}

start();

// The console's only way to the server: the management REST API under /api/v1.
// The session cookie is HttpOnly; unsafe requests carry the session's CSRF token in a header.

const BASE = "/api/v1";
let csrfToken = null;
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `request failed (HTTP ${status})`);
    this.status = status;
    this.code = problem.code || "";
    this.fieldErrors = problem.errors || [];
  }

  /** The message for one request field (`name`, `description`, ...), if the API named it,
   * to be shown at that field: errorBox then leaves it out. */
  forField(name) {
    const found = this.fieldErrors.find((e) => e.field === name || e.field === `body.${name}`);
    if (!found) return null;
    found.shownAtField = true;
    return found.message;
  }
}

export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** `file`: the answer's body as a Blob (a document to save), not JSON; errors are JSON still. */
async function request(method, path, body, { file = false } = {}) {
  const headers = { Accept: file ? "*/*" : "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, { detail: "the server cannot be reached; check your connection" });
  }
  if (response.ok && file) return response.blob();
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/session")) onUnauthorized();
    throw new ApiError(response.status, data || {});
  }
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body = {}) => request("POST", path, body),
  put: (path, body = {}) => request("PUT", path, body),
  patch: (path, body = {}) => request("PATCH", path, body),
  delete: (path) => request("DELETE", path),
  file: (path) => request("GET", path, undefined, { file: true }),
};

/** Encodes a path segment (project, repository, digest, tag, user, key ID). "." and ".."
 * are refused: no name is either, and a URL resolves them (encoded too) to another path,
 * so a crafted console link would act on the parent (a project instead of a repository). */
export function seg(value) {
  const text = String(value);
  if (text === "." || text === "..") throw new Error(`${JSON.stringify(text)} is not a name`);
  return encodeURIComponent(text);
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return pairs.length ? "?" + new URLSearchParams(pairs).toString() : "";
}

export async function currentSession() {
  try {
    const session = await request("GET", "/session");
    csrfToken = session.csrf_token;
    return session;
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

export async function signIn(user, password) {
  const session = await request("POST", "/session", { user, password });
  csrfToken = session.csrf_token;
  return session;
}

export async function signOut() {
  try {
    await request("DELETE", "/session");
  } finally {
    csrfToken = null;
  }
}

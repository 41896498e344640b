// The HTTP API (docs/contract/openapi.json): every call has a deadline, a refused one throws an
// ApiError with the server's status and code, and an expired access token is refreshed once
// (the refresh token is used once: the answer carries its successor).

const DEADLINE_MS = 10_000;

/** A refused or failed call: `status` 0 means the server was not reached. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    // Worth trying again later: the network, the server's own trouble, a rate limit.
    this.retryable = status === 0 || status === 429 || status >= 500;
  }
}

export class Api {
  /**
   * @param {string} base the API's address (`http://127.0.0.1:8084`).
   * @param {{get: () => object|null, set: (session: object|null) => void}} sessions where the
   *   signed-in session (the token pair) is kept.
   */
  constructor(base, sessions) {
    this.base = base.replace(/\/$/, "");
    this.sessions = sessions;
    this.refreshing = null;
  }

  /** `method path` with a JSON body; the answer's JSON (null for 204). */
  async call(method, path, body = undefined, { auth = true } = {}) {
    const first = await this.attempt(method, path, body, auth);
    if (first.status === 401 && auth && this.sessions.get()?.refresh_token) {
      await this.refresh();
      return this.answer(await this.attempt(method, path, body, auth));
    }
    return this.answer(first);
  }

  async attempt(method, path, body, auth) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    const token = this.sessions.get()?.access_token;
    if (auth && token) headers.authorization = `Bearer ${token}`;
    try {
      return await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(DEADLINE_MS),
      });
    } catch (e) {
      throw new ApiError(0, "unavailable", `the server did not answer (${e.name})`);
    }
  }

  async answer(response) {
    if (response.status === 204) return null;
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) {
      const retryAfter = Number(response.headers.get("retry-after")) || null;
      // The published ErrorBody: {"error": {"code", "message", "retry_after"}}.
      throw new ApiError(
        response.status,
        json?.error?.code ?? "error",
        json?.error?.message ?? `HTTP ${response.status}`,
        retryAfter ?? json?.error?.retry_after ?? null,
      );
    }
    return json;
  }

  /** Exchanges the refresh token for a new pair (one exchange at a time). */
  async refresh() {
    this.refreshing ??= (async () => {
      try {
        const session = this.sessions.get();
        const response = await this.attempt(
          "POST",
          "/v1/auth/refresh",
          { refresh_token: session.refresh_token },
          false,
        );
        if (response.status === 401 || response.status === 404) {
          this.sessions.set(null); // signed out elsewhere, or expired: sign in again
          throw new ApiError(401, "unauthenticated", "the session ended: sign in again");
        }
        const pair = await this.answer(response);
        this.sessions.set({ ...session, ...pair });
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /** A valid access token: refreshed when it expires within a minute. */
  async token() {
    const session = this.sessions.get();
    if (!session) throw new ApiError(401, "unauthenticated", "not signed in");
    const expires = tokenExpiry(session.access_token);
    if (expires && expires - Date.now() < 60_000) await this.refresh();
    return this.sessions.get().access_token;
  }
}

/** When a JWT expires (milliseconds), from its `exp` claim. */
function tokenExpiry(jwt) {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).exp * 1000;
  } catch {
    return null;
  }
}

// The REST API as the console calls it: the key from this tab's session storage in the
// Authorization header, errors sorted into the three kinds the views treat differently.

const KEY = "diffii.apiKey";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  signIn(key) {
    sessionStorage.setItem(KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
  },
};

/** The server answered with an error; `detail` is its body's detail (a string or a 422 list). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/** 401: the key is missing, unknown or revoked. */
export class Unauthorized extends ApiError {}

/** No answer, or a gateway/unavailable answer: worth retrying (an API restart looks like this). */
export class Unreachable extends Error {}

const TRANSIENT = new Set([502, 503, 504]);
const unauthorizedListeners = [];

export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.key ?? ""}`, ...extra };
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return body.detail ?? body;
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

/** Raise the right error for a response that is not ok. */
export async function check(response) {
  if (response.ok) return response;
  const detail = await detailOf(response);
  if (response.status === 401) {
    const error = new Unauthorized(401, detail);
    unauthorizedListeners.forEach((listener) => listener(error));
    throw error;
  }
  if (TRANSIENT.has(response.status)) throw new Unreachable(`the API answered ${response.status}: ${detail}`);
  throw new ApiError(response.status, detail);
}

export async function request(path, { method = "GET", json, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), cache: "no-store", signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Unreachable(`the API is not answering (${error.message})`);
  }
  return check(response);
}

export async function getJson(path) {
  return (await request(path)).json();
}

/** POST a dataset archive with upload progress (fetch reports none): resolves to the dataset. */
export function uploadDataset(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/datasets");
    xhr.setRequestHeader("Authorization", `Bearer ${session.key ?? ""}`);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onerror = () => reject(new Unreachable("the upload did not reach the API"));
    xhr.onload = () => {
      const response = new Response(xhr.responseText, {
        status: xhr.status,
        headers: { "Content-Type": "application/json" },
      });
      check(response).then((ok) => ok.json()).then(resolve, reject);
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/**
 * The archive's signed link, for the browser to navigate to: it downloads the archive itself (it can
 * be gigabytes, too big for the page's memory), and with S3 storage the link is the bucket's origin,
 * where the page's own requests may not go (connect-src 'self') but a navigation may.
 */
export async function archiveLink(jobId) {
  return (await getJson(`/v1/jobs/${encodeURIComponent(jobId)}/archive/link`)).url;
}

/**
 * Run `poll` now and again after each answer, one request at a time: `poll` returns the delay
 * to the next run in ms (null stops). A hidden tab waits `hiddenFactor` times longer. When the
 * API does not answer, `onDown(message, retryMs)` is told and the delay doubles up to a cap;
 * the next answer calls `onUp()`.
 */
export class Poller {
  constructor(poll, { onDown, onUp, onError, hiddenFactor = 5, maxBackoff = 20000 }) {
    Object.assign(this, { poll, onDown, onUp, onError, hiddenFactor, maxBackoff });
    this.timer = null;
    this.stopped = false;
    this.backoff = 1000;
    this.down = false;
    this.onVisible = () => {
      if (!document.hidden && !this.stopped) this.now();
    };
    document.addEventListener("visibilitychange", this.onVisible);
  }

  now() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.running) {
      this.again = true;
      return;
    }
    this.run();
  }

  async run() {
    this.running = true;
    let delay = null;
    try {
      delay = await this.poll();
      this.backoff = 1000;
      if (this.down) {
        this.down = false;
        this.onUp?.();
      }
    } catch (error) {
      if (error instanceof Unreachable) {
        this.down = true;
        delay = this.backoff;
        this.backoff = Math.min(this.backoff * 2, this.maxBackoff);
        this.onDown?.(error.message, delay);
      } else if (!(error instanceof Unauthorized)) {
        this.onError?.(error);
      }
    } finally {
      this.running = false;
    }
    if (this.stopped) return;
    if (this.again) {
      this.again = false;
      delay = 0;
    }
    if (delay === null || delay === undefined) return;
    if (document.hidden) delay *= this.hiddenFactor;
    this.timer = setTimeout(() => this.run(), delay);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisible);
  }
}

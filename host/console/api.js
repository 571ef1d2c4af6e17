// The console's one way to the host: the HTTP API, with the token the
// person gave (kept in this tab's sessionStorage only, sent as a bearer
// token, never put in a URL). Streams are Server-Sent Events read over
// fetch, because EventSource cannot send an Authorization header.

const KEY = "concord.token";

export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (t) => sessionStorage.setItem(KEY, t.trim()),
  clear: () => sessionStorage.removeItem(KEY),
};

/** A refusal or failure, with the API's `{error, detail}`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(`${body.error}: ${body.detail}`);
    this.status = status;
    this.code = body.error;
    this.detail = body.detail;
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function refusal(r) {
  const text = await r.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: shown as text below
  }
  if (body && typeof body.error === "string") return new ApiError(r.status, body);
  return new ApiError(r.status, { error: `http_${r.status}`, detail: text.slice(0, 300) || r.statusText });
}

/** Calls the API; resolves to the JSON answer, or throws an ApiError. */
export async function api(path, { method = "GET", body, signal } = {}) {
  let r;
  try {
    r = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: "unreachable", detail: `cannot reach the host (${e.message}); is concord serve running?` });
  }
  if (!r.ok) throw await refusal(r);
  return r.json();
}

/** `?a=1&b=2` of the parameters that are set. */
export function query(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, String(v));
  const s = u.toString();
  return s ? `?${s}` : "";
}

/** Path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/**
 * Follows an SSE stream from `after` until `signal` aborts, calling
 * `onItem` with each item's JSON in order. A dropped connection (a host
 * restart) resumes with Last-Event-ID, so nothing is missed or seen twice.
 * A refusal (401, 403, 422) ends it through `onError`; other failures are
 * reported and retried.
 */
export async function follow(path, after, onItem, { signal, onError, onOpen } = {}) {
  let last = after;
  while (!signal?.aborted) {
    try {
      const r = await fetch(path, {
        headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(last) }),
        signal,
      });
      if (!r.ok) {
        const err = await refusal(r);
        onError?.(err);
        if ([401, 403, 404, 422].includes(r.status)) return;
      } else {
        onOpen?.();
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            let id = null;
            let data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("id:")) id = line.slice(3).trim();
              else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
            }
            if (!data) continue; // a keep-alive comment
            if (id !== null) last = Number(id);
            onItem(JSON.parse(data));
          }
        }
      }
    } catch (e) {
      if (signal?.aborted) return;
      onError?.(e instanceof ApiError ? e : new ApiError(0, { error: "stream_lost", detail: `${e.message}; reconnecting` }));
    }
    await sleep(1000, signal);
  }
}

/** Who the token is (`{name, role, open}`), or null without a valid one. */
export async function whoami() {
  try {
    return await api("/v1/whoami");
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

/** The audit entry with this seq, or null. */
export async function auditEntry(seq, signal) {
  const page = await api(`/v1/audit${query({ after: seq - 1, limit: 1 })}`, { signal });
  return page.entries.find((e) => e.seq === seq) || null;
}

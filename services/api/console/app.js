// The console's pages: sign in, the job list, one job, a new job. Routes live in the URL's
// hash (#/jobs, #/jobs/<id>, #/new); the API key never does.

import {
  ApiError, Poller, Unauthorized, Unreachable, archiveLink, check, getJson, onUnauthorized, request,
  session, uploadDataset,
} from "./api.js";
import { age, detailText, h, replace, when } from "./dom.js";
import {
  bodyFrom, clearErrorOnInput, clearFieldErrors, jobForm, renderFields, showFieldErrors, typedValues,
} from "./form.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const connection = document.getElementById("connection");
const STAGES = ["prepare", "learn", "generate", "package"];
const RUNNING_POLL_MS = 3000;
const IDLE_POLL_MS = 15000;
const JOB_POLL_MS = 2000;

let poller = null;
let signInReason = "";
// Each route() counts one; a page that awaited something checks it still is the page shown.
let routeCount = 0;
const stillShown = (count) => count === routeCount;

function stopPolling() {
  poller?.stop();
  poller = null;
  connection.hidden = true;
}

function poll(fn, onError) {
  stopPolling();
  poller = new Poller(fn, {
    onDown(message, retryMs) {
      connection.hidden = false;
      connection.textContent = `Connection lost: ${message}. Retrying in ${Math.round(retryMs / 1000)} s…`;
    },
    onUp() {
      connection.hidden = true;
    },
    onError,
  });
  poller.now();
}

onUnauthorized((error) => {
  session.signOut();
  signInReason = `The API refused this key: ${detailText(error.detail)}. Sign in with a valid key.`;
  route();
});

function alertBox(kind, ...text) {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status" }, ...text);
}

function errorMessage(error) {
  if (error instanceof ApiError) return `${detailText(error.detail)} (HTTP ${error.status})`;
  return error.message;
}

// -- sign in ---------------------------------------------------------------------------------

function signInPage() {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "dfi_…", required: true });
  const message = h("div", { id: "sign-in-error" });
  if (signInReason) message.append(alertBox("error", signInReason));
  const form = h(
    "form",
    { class: "card", id: "sign-in", novalidate: true },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key (",
      h("code", {}, "diffii admin create-key --owner NAME"),
      "). It stays in this tab's session storage until you sign out or close the tab."),
    message,
    h("div", { class: "actions" }, input, h("button", { type: "submit" }, "Sign in")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    session.signIn(key);
    signInReason = "";
    try {
      await request("/v1/jobs?limit=1");
      location.hash = "#/jobs";
      route();
    } catch (error) {
      if (!(error instanceof Unauthorized)) {
        session.signOut();
        replace(message, alertBox("error", `Could not sign in: ${errorMessage(error)}`));
      }
    }
  });
  replace(view, form);
  input.focus();
}

// -- jobs ------------------------------------------------------------------------------------

// While the job learns its concepts the bar counts learning's steps (progress.learning), then images.
function learningNow(job) {
  const p = job.progress;
  return p.stage === "learning" && p.learning ? p.learning : null;
}

function progressOf(job) {
  const p = job.progress;
  const learning = learningNow(job);
  if (learning) {
    return h("progress", { max: Math.max(learning.steps, 1), value: learning.step, title: `learning step ${learning.step} / ${learning.steps}` });
  }
  return h("progress", { max: Math.max(p.images_total, 1), value: p.images_done, title: `${p.images_done} / ${p.images_total} images` });
}

function progressText(job) {
  const p = job.progress;
  const learning = learningNow(job);
  const images = `${p.images_done} of ${p.images_total} images, ${p.shards_done} of ${p.shards_total} shards`;
  return learning ? `learning step ${learning.step} of ${learning.steps}; ${images}` : images;
}

function statusBadge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status);
}

async function jobsPage() {
  const count = routeCount;
  const statuses = await jobStatuses();
  if (!stillShown(count)) return;
  const filter = h("select", { id: "status-filter" }, h("option", { value: "" }, "all"), statuses.map((s) => h("option", { value: s }, s)));
  filter.value = new URLSearchParams(location.hash.split("?")[1] ?? "").get("status") ?? "";
  const body = h("tbody", { id: "jobs" });
  const more = h("div", { class: "actions" });
  let cursor = null;
  let extra = [];

  const row = (job) =>
    h(
      "tr",
      { dataset: { job: job.id } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id.slice(0, 12))),
      h("td", {}, statusBadge(job.status)),
      h("td", {}, job.progress.stage),
      h("td", {}, progressOf(job)),
      h("td", {}, job.params.method ?? ""),
      h("td", {}, job.params.model ?? ""),
      h("td", { class: "num" }, `${job.progress.images_done} / ${job.progress.images_total}`),
      h("td", { title: when(job.created_at) }, age(job.created_at)),
    );

  const query = (after) => {
    const params = new URLSearchParams({ limit: "25" });
    if (filter.value) params.set("status", filter.value);
    if (after) params.set("cursor", after);
    return `/v1/jobs?${params}`;
  };

  const render = (jobs) => {
    const all = [...jobs, ...extra];
    replace(body, all.length ? all.map(row) : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No jobs yet: start one under New job.")));
    replace(more, cursor ? h("button", { class: "secondary", type: "button", onclick: loadMore }, "Older jobs") : null);
  };

  async function loadMore() {
    const page = await getJson(query(cursor));
    extra = [...extra, ...page.jobs];
    cursor = page.next_cursor;
    poller?.now();
  }

  filter.addEventListener("change", () => {
    extra = [];
    cursor = null;
    history.replaceState(null, "", filter.value ? `#/jobs?status=${filter.value}` : "#/jobs");
    poller?.now();
  });

  replace(
    view,
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("label", {}, "Status ", filter), h("a", { href: "#/new", class: "button" }, "New job")),
    h("table", {}, h("thead", {}, h("tr", {}, ["Job", "Status", "Stage", "Progress", "Method", "Model", "Images", "Age"].map((t) => h("th", {}, t)))), body),
    more,
  );

  poll(async () => {
    const page = await getJson(query(null));
    if (!extra.length) cursor = page.next_cursor;
    render(page.jobs);
    return [...page.jobs, ...extra].some((job) => !TERMINAL.has(job.status)) ? RUNNING_POLL_MS : IDLE_POLL_MS;
  });
}

let openapi = null;
async function schema() {
  if (!openapi) {
    let response;
    try {
      response = await fetch("/openapi.json", { cache: "no-store" });
    } catch (error) {
      throw new Unreachable(`the API is not answering (${error.message})`);
    }
    openapi = await (await check(response)).json();
  }
  return openapi;
}

// The statuses a job never leaves, as the API's schema lists them (`x-terminal` on JobStatus).
let TERMINAL = new Set();
async function loadTerminal() {
  try {
    const doc = await schema();
    TERMINAL = new Set(doc.components?.schemas?.JobStatus?.["x-terminal"] ?? []);
  } catch {
    // Left as it was: the page that needs the schema says why the API did not answer.
  }
}

async function jobStatuses() {
  try {
    const doc = await schema();
    return doc.components?.schemas?.JobStatus?.enum ?? [];
  } catch {
    return [];
  }
}

// -- one job ---------------------------------------------------------------------------------

function stageItems(job) {
  const steps = job.progress.steps ?? [];
  const shards = job.progress.shards ?? [];
  return STAGES.map((stage) => {
    const rows = stage === "generate" ? shards : steps.filter((s) => s.kind === stage);
    let state = "waiting";
    if (rows.length) {
      const done = rows.filter((s) => s.status === "succeeded").length;
      if (rows.some((s) => s.status === "failed")) state = "failed";
      else if (done === rows.length) state = "succeeded";
      else if (rows.some((s) => s.status === "cancelled")) state = "cancelled";
      else state = stage === "generate" ? `${done} / ${rows.length} shards` : rows.at(-1).status;
    }
    const last = rows.at(-1);
    const cls = state === "succeeded" ? "done" : state === "failed" ? "bad" : rows.length ? "current" : "";
    return h(
      "li",
      { class: cls, dataset: { stage } },
      h("div", { class: "stage" }, stage),
      h("div", { dataset: { stageState: stage } }, state),
      last && stage !== "generate" ? h("div", { class: "muted" }, `attempt ${last.attempts} of ${last.max_attempts}`) : null,
      last?.error && stage !== "generate" ? h("div", { class: "error-text" }, last.error) : null,
      last?.not_before && last.status !== "succeeded" && stage !== "generate" ? h("div", { class: "muted" }, `next retry after ${when(last.not_before)}`) : null,
    );
  });
}

function shardTable(job) {
  const shards = job.progress.shards ?? [];
  if (!shards.length) return h("p", { class: "muted" }, "The generate shards are made when concept learning ends.");
  return h(
    "table",
    { id: "shards" },
    h("thead", {}, h("tr", {}, ["Class", "Images", "Status", "Done", "Attempts", "Last error", "Next retry", "Worker"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      shards.map((s) =>
        h(
          "tr",
          {},
          h("td", {}, h("bdi", {}, s.class_name ?? "")),
          h("td", { class: "num" }, `${s.start}–${s.stop}`),
          h("td", {}, statusBadge(s.status)),
          h("td", { class: "num" }, `${s.images_done} / ${s.images_total}`),
          h("td", { class: "num" }, `${s.attempts} / ${s.max_attempts}`),
          h("td", { class: "error-text" }, s.error ?? ""),
          h("td", {}, s.not_before && s.status !== "succeeded" ? when(s.not_before) : ""),
          h("td", { class: "mono" }, s.worker ?? ""),
        ),
      ),
    ),
  );
}

function datasetReport(job) {
  const report = job.dataset;
  if (!report) return h("p", { class: "muted" }, "The prepare stage reports the dataset once it has decoded every image.");
  return h(
    "div",
    { class: "grid2" },
    h(
      "table",
      { id: "dataset-classes" },
      h("thead", {}, h("tr", {}, h("th", {}, "Class"), h("th", {}, "Usable images"))),
      h("tbody", {}, report.classes.map((c) => h("tr", {}, h("td", {}, h("bdi", {}, c.name)), h("td", { class: "num" }, c.images)))),
    ),
    h(
      "div",
      { id: "dataset-skipped" },
      report.skipped.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Skipped file"), h("th", {}, "Why"))),
            h("tbody", {}, report.skipped.map((s) => h("tr", {}, h("td", { class: "mono" }, h("bdi", {}, s.path)), h("td", {}, s.reason)))))
        : h("p", { class: "muted" }, "No file was skipped."),
    ),
  );
}

function paramList(params) {
  return h(
    "dl",
    { class: "params", id: "params" },
    Object.entries(params).map(([name, value]) => [
      h("dt", {}, name),
      h("dd", {}, typeof value === "object" && value !== null ? JSON.stringify(value) : String(value)),
    ]),
  );
}

/**
 * The preview sheets as blob: images (an <img src> cannot send the API key). The package stage
 * stores them class by class, so a list can be partial: `shown` keeps the sheets fetched already.
 */
async function loadPreviews(jobId, container, shown) {
  const list = await getJson(`/v1/jobs/${jobId}/preview`);
  for (const item of list.classes) {
    if (shown.has(item.index)) continue;
    const blob = await (await request(item.url)).blob();
    shown.set(
      item.index,
      h("figure", { dataset: { previewClass: item.name } },
        h("figcaption", {}, h("bdi", {}, item.name), ": real images beside synthetic ones"),
        h("img", { src: URL.createObjectURL(blob), alt: `preview sheet of class ${item.name}` })),
    );
  }
  replace(container, [...shown.keys()].sort((a, b) => a - b).map((index) => shown.get(index)));
  return shown.size;
}

function jobPage(jobId) {
  const top = h("div", { id: "job-alerts" });
  const actionsNote = h("div", { id: "action-result" });
  const summary = h("section", { class: "card", id: "summary" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const shards = h("div");
  const dataset = h("div");
  const params = h("div");
  const previews = h("div", { class: "previews", id: "previews" }, h("p", { class: "muted" }, "Preview sheets appear here when generation ends."));
  const download = h("button", { type: "button", id: "download" }, "Download archive");
  const cancel = h("button", { type: "button", id: "cancel", class: "secondary" }, "Cancel job");
  const remove = h("button", { type: "button", id: "delete", class: "danger" }, "Delete job");
  let previewsLoaded = false;
  const sheets = new Map();

  const note = (kind, text) => replace(actionsNote, alertBox(kind, text));

  download.addEventListener("click", async () => {
    replace(actionsNote);
    try {
      // A navigation to the signed link, not a fetch: with S3 it is the bucket's origin.
      const link = h("a", { href: await archiveLink(jobId), download: "", id: "archive-link", hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      note("info", "The download has started.");
    } catch (error) {
      if (error instanceof ApiError && error.status === 409) note("error", `No archive yet: ${detailText(error.detail)}`);
      else if (!(error instanceof Unauthorized)) note("error", `Download failed: ${errorMessage(error)}`);
    }
  });
  cancel.addEventListener("click", async () => {
    try {
      await request(`/v1/jobs/${jobId}/cancel`, { method: "POST" });
      note("info", "Cancel requested: running shards stop at their next batch.");
      poller?.now();
    } catch (error) {
      if (!(error instanceof Unauthorized)) note("error", `Cancel failed: ${errorMessage(error)}`);
    }
  });
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete job ${jobId}, its images and its archive? This cannot be undone.`)) return;
    try {
      await request(`/v1/jobs/${jobId}`, { method: "DELETE" });
      stopPolling();
      location.hash = "#/jobs";
    } catch (error) {
      if (!(error instanceof Unauthorized)) note("error", `Delete failed: ${errorMessage(error)}`);
    }
  });

  replace(
    view,
    h("h1", {}, "Job ", h("span", { class: "mono" }, jobId)),
    top,
    h("div", { class: "actions" }, download, cancel, remove),
    actionsNote,
    summary,
    h("h2", {}, "Stages"), timeline, shards,
    h("h2", {}, "Preview"), previews,
    h("h2", {}, "Dataset report"), dataset,
    h("h2", {}, "Parameters"), params,
  );

  let shownStatus = null;
  const render = (job) => {
    // An action's answer (the archive's 409, "cancel requested") is stale once the job has ended.
    if (shownStatus !== null && job.status !== shownStatus && TERMINAL.has(job.status)) replace(actionsNote);
    shownStatus = job.status;
    // A failed job's message comes first: it is what the user needs to read.
    replace(top, job.status === "failed" ? alertBox("error", h("strong", {}, "This job failed: "), job.message ?? "no message")
      : job.message ? alertBox("info", job.message) : null);
    const p = job.progress;
    replace(
      summary,
      h("div", { class: "actions" }, statusBadge(job.status), h("span", { id: "stage" }, `stage: ${p.stage}`),
        h("span", { class: "muted" }, `created ${when(job.created_at)}`),
        job.finished_at ? h("span", { class: "muted" }, `ended ${when(job.finished_at)}`) : null),
      progressOf(job),
      h("div", { class: "muted", id: "progress-text" }, progressText(job)),
    );
    replace(timeline, stageItems(job));
    replace(shards, shardTable(job));
    replace(dataset, datasetReport(job));
    replace(params, paramList(job.params));
    cancel.disabled = TERMINAL.has(job.status) || job.status === "cancelling";
    remove.disabled = !TERMINAL.has(job.status);
    // Not disabled before the archive exists: the API's 409 says why it is not there (yet).
    download.title = job.archive_ready ? "" : "the archive is made when the job succeeds";
  };

  poll(
    async () => {
      const job = await getJson(`/v1/jobs/${jobId}`);
      render(job);
      const { images_done: done, images_total: total } = job.progress;
      const generated = total > 0 && done >= total;
      if (!previewsLoaded && (generated || job.status === "packaging" || job.status === "succeeded")) {
        try {
          const count = await loadPreviews(jobId, previews, sheets);
          previewsLoaded = job.status === "succeeded" || count >= (job.dataset?.classes.length ?? Infinity);
        } catch (error) {
          if (!(error instanceof ApiError && error.status === 409)) throw error; // 409: not made yet
        }
      }
      if (TERMINAL.has(job.status) && (previewsLoaded || job.status !== "succeeded")) return null;
      return JOB_POLL_MS;
    },
    (error) => {
      if (error instanceof ApiError && error.status === 404) replace(top, alertBox("error", `Job ${jobId} not found (deleted, or another key's).`));
      else replace(top, alertBox("error", errorMessage(error)));
    },
  );
}

// -- new job ---------------------------------------------------------------------------------

async function newJobPage() {
  const count = routeCount;
  const doc = await schema();
  if (!stillShown(count)) return;
  const form = jobForm(doc);
  let datasetId = null;
  let idempotencyKey = crypto.randomUUID();
  const freshKey = () => (idempotencyKey = crypto.randomUUID());

  const file = h("input", { type: "file", id: "dataset-file", accept: ".zip,.tar,.tar.gz,.tgz" });
  const bar = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const found = h("div", { id: "dataset-result" });
  const drop = h("label", { class: "drop", id: "drop" }, "Drop a dataset archive here (.zip, .tar, .tar.gz: one folder per class), or choose one:", file);
  const uri = form.uri ? h("input", { type: "text", id: "dataset-uri", placeholder: "s3://bucket/key.zip" }) : null;

  async function upload(chosen) {
    datasetId = null;
    freshKey();
    bar.hidden = false;
    bar.value = 0;
    replace(found, h("span", { class: "muted" }, `Uploading ${chosen.name}…`));
    try {
      const dataset = await uploadDataset(chosen, (loaded, total) => (bar.value = loaded / total));
      bar.value = 1;
      datasetId = dataset.id;
      replace(
        found,
        alertBox("info", h("bdi", {}, dataset.filename), `: ${dataset.classes.length} classes, ${dataset.images} images found. `,
          dataset.classes.map((c, i) => [i ? ", " : "", h("bdi", {}, c.name), ` (${c.images})`])),
        dataset.skipped.length
          ? h("details", {}, h("summary", {}, `${dataset.skipped.length} files left out`),
              h("ul", {}, dataset.skipped.map((s) => h("li", {}, h("code", {}, h("bdi", {}, s.path)), ": ", s.reason))))
          : null,
      );
    } catch (error) {
      bar.hidden = true;
      if (!(error instanceof Unauthorized)) replace(found, alertBox("error", `The dataset was refused: ${errorMessage(error)}`));
    }
  }

  file.addEventListener("change", () => file.files[0] && upload(file.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const chosen = event.dataTransfer.files[0];
    if (chosen) upload(chosen);
  });

  const method = h("select", { id: "field-method", name: "method" }, form.methods.map((m) => h("option", { value: m }, m)));
  method.value = form.defaultMethod ?? form.methods[0];
  const fields = h("div", { id: "fields" });
  const formError = h("div", { id: "form-error" });
  const submit = h("button", { type: "submit", id: "submit" }, "Start job");
  const jobForm_ = h(
    "form",
    { class: "card", id: "job-form", novalidate: true },
    h("h2", {}, "Parameters"),
    h("p", { class: "muted" }, "Empty fields take the server's default. Each field says its range."),
    h("div", { class: "field" }, h("label", { for: "field-method" }, "Method"), method,
      h("div", { class: "hint" }, doc.components?.schemas?.JobRequest?.properties?.method?.description ?? "augmentation method"),
      h("div", { class: "error-text", dataset: { errorFor: "method" } })),
    fields,
    formError,
    h("div", { class: "actions" }, submit),
  );
  const draw = () => renderFields(doc, fields, form.fields(method.value), typedValues(fields));
  method.addEventListener("change", () => {
    freshKey();
    draw();
  });
  jobForm_.addEventListener("input", freshKey);
  clearErrorOnInput(jobForm_);
  draw();

  jobForm_.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(jobForm_);
    replace(formError);
    const body = bodyFrom(fields, method.value);
    if (datasetId) body.dataset_id = datasetId;
    else if (uri?.value.trim()) body.dataset_uri = uri.value.trim();
    else {
      replace(formError, alertBox("error", "Upload a dataset first."));
      return;
    }
    try {
      // One key per filled form: a double click or a retry after a lost answer makes one job.
      const response = await request("/v1/jobs", { method: "POST", json: body, headers: { "Idempotency-Key": idempotencyKey } });
      const job = await response.json();
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) {
        const rest = showFieldErrors(jobForm_, error.detail);
        if (rest.length) replace(formError, alertBox("error", detailText(rest)));
      } else if (!(error instanceof Unauthorized)) {
        replace(formError, alertBox("error", `The job was not started: ${errorMessage(error)}`));
      }
    }
  });

  replace(
    view,
    h("h1", {}, "New job"),
    h("section", { class: "card" }, h("h2", {}, "Dataset"), drop, bar, found,
      uri ? h("div", { class: "field" }, h("label", { for: "dataset-uri" }, "or a dataset URI"), uri,
        h("div", { class: "hint" }, "an archive in a bucket this server may read")) : null),
    jobForm_,
  );
}

// -- routing ---------------------------------------------------------------------------------

async function route() {
  routeCount += 1;
  stopPolling();
  const signedIn = Boolean(session.key);
  nav.hidden = !signedIn;
  if (!signedIn) return signInPage();
  const count = routeCount;
  await loadTerminal();
  if (!stillShown(count)) return;
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/jobs";
  const job = path.match(/^\/jobs\/([0-9A-Za-z_-]{1,64})$/);
  try {
    if (job) jobPage(job[1]);
    else if (path === "/new") await newJobPage();
    else await jobsPage();
  } catch (error) {
    if (error instanceof Unauthorized) return;
    const retry = error instanceof Unreachable ? " Reload the page when the API is back." : "";
    replace(view, alertBox("error", `${errorMessage(error)}.${retry}`));
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  signInReason = "";
  location.hash = "";
  route();
});
window.addEventListener("hashchange", route);
route();

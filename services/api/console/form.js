// The job form, built from the served OpenAPI document: whatever the job body's schema says
// (a plain object with a `method` enum, or one schema per method under oneOf/anyOf or a
// discriminator), each method shows its own fields with their default, range and description.
// Only fields the user fills are sent, so the server's own defaults (some depend on the model
// or the preset) stay the server's.

import { h, replace } from "./dom.js";

// Where the dataset comes from is the page's upload, not a form field.
const DATASET_FIELDS = new Set(["dataset_id", "dataset_uri"]);

/** A schema with its $ref followed; the referring schema's own keys (default, description) win. */
export function deref(doc, schema) {
  let s = schema ?? {};
  for (let hops = 0; s.$ref && hops < 32; hops++) {
    const { $ref, ...own } = s;
    const target = $ref.replace(/^#\//, "").split("/").reduce((node, part) => node?.[part], doc) ?? {};
    s = { ...target, ...own };
  }
  if (s.allOf?.length === 1 && !s.properties) {
    const { allOf, ...own } = s;
    return { ...deref(doc, allOf[0]), ...own };
  }
  return s;
}

/** Properties of a schema, its allOf parts merged in. */
function propertiesOf(doc, schema) {
  const s = deref(doc, schema);
  const merged = {};
  for (const part of s.allOf ?? []) Object.assign(merged, propertiesOf(doc, part));
  return Object.assign(merged, s.properties ?? {});
}

function methodOf(doc, variant) {
  const method = deref(doc, propertiesOf(doc, variant).method);
  if (method.const !== undefined) return method.const;
  if (method.enum?.length === 1) return method.enum[0];
  return null;
}

/**
 * The job body's methods and each one's fields: { methods, defaultMethod, fields(method), uri }.
 * `uri` says whether the server reads datasets from URIs too (the field is in the schema).
 */
export function jobForm(doc) {
  const post = doc.paths?.["/v1/jobs"]?.post;
  const body = deref(doc, post?.requestBody?.content?.["application/json"]?.schema);
  const shared = propertiesOf(doc, body);
  const variants = new Map();
  for (const member of [...(body.oneOf ?? []), ...(body.anyOf ?? [])]) {
    const method = methodOf(doc, member);
    if (method !== null) variants.set(method, member);
  }
  for (const [method, ref] of Object.entries(body.discriminator?.mapping ?? {})) {
    if (!variants.has(method)) variants.set(method, { $ref: ref });
  }
  if (variants.size) {
    const methods = [...variants.keys()];
    const fields = (method) => ({ ...shared, ...propertiesOf(doc, variants.get(method)) });
    const hasUri = methods.some((m) => "dataset_uri" in fields(m));
    const defaultMethod = deref(doc, shared.method).default ?? methods[0];
    return { methods, defaultMethod, fields, uri: hasUri };
  }
  const method = deref(doc, shared.method);
  return {
    methods: method.enum ?? [],
    defaultMethod: method.default ?? method.enum?.[0],
    fields: () => shared,
    uri: "dataset_uri" in shared,
  };
}

/**
 * A nullable `anyOf: [X, {type: null}]` is X, left empty to send nothing. An integer that may also
 * come as a string of digits (the seed: 63 bits, more than a JavaScript number holds) is the integer.
 */
function unwrap(doc, schema) {
  const s = deref(doc, schema);
  let options = (s.anyOf ?? s.oneOf ?? []).map((o) => deref(doc, o)).filter((o) => o.type !== "null");
  if (options.length === 2 && options.some((o) => o.type === "integer") && options.some((o) => o.type === "string")) {
    options = options.filter((o) => o.type === "integer");
  }
  if (options.length === 1) {
    const { anyOf, oneOf, ...rest } = s;
    return { ...options[0], ...rest };
  }
  return s;
}

// A bound past 2**53 reached the page rounded (JSON.parse): the seed's 2**63 - 1 is named instead.
const exact = (n) => (n === 2 ** 63 ? "2^63 − 1" : n);

function bound(value, exclusive, open, closed) {
  if (exclusive !== undefined) return [exact(exclusive), open];
  if (value !== undefined) return [exact(value), closed];
  return null;
}

export function rangeText(s) {
  const low = bound(s.minimum, s.exclusiveMinimum, "(", "[");
  const high = bound(s.maximum, s.exclusiveMaximum, ")", "]");
  const parts = [];
  if (low || high) {
    parts.push(`${low ? low[1] + low[0] : "(…"}, ${high ? high[0] + high[1] : "…)"}`);
  }
  if (s.multipleOf !== undefined) parts.push(`a multiple of ${s.multipleOf}`);
  if (s.minLength !== undefined || s.maxLength !== undefined)
    parts.push(`${s.minLength ?? 0}–${s.maxLength ?? "…"} characters`);
  if (s.minItems !== undefined || s.maxItems !== undefined)
    parts.push(`${s.minItems ?? 0}–${s.maxItems ?? "…"} values`);
  return parts.join(", ");
}

function kindOf(s) {
  if (s.enum) return "enum";
  if (s.type === "boolean") return "boolean";
  if (s.type === "integer" || s.type === "number") return "number";
  if (s.type === "object" && s.properties) return "group";
  if (s.type === "array" && ["string", "number", "integer"].includes(s.items?.type)) return "list";
  if (s.type === "array" || s.type === "object") return "json";
  return "text";
}

function hintFor(s, item) {
  const bits = [];
  if (s.description) bits.push(s.description);
  if (s.default !== undefined) bits.push(`default: ${JSON.stringify(s.default)}`);
  const range = rangeText(s);
  if (range) bits.push(`range: ${range}`);
  const itemRange = item ? rangeText(item) : "";
  if (itemRange) bits.push(`each value: ${itemRange}`);
  return bits.join(" · ");
}

function control(kind, s, item, path, previous) {
  const common = { id: `field-${path}`, name: path, dataset: { path, kind, item: item?.type } };
  let el;
  if (kind === "enum" || kind === "boolean") {
    const choices = kind === "enum" ? s.enum : [true, false];
    const blank = s.default !== undefined ? `default (${s.default})` : "(not set)";
    el = h("select", common, h("option", { value: "" }, blank), choices.map((c) => h("option", { value: String(c) }, String(c))));
  } else if (kind === "number") {
    const step = s.type === "integer" ? (s.multipleOf ?? 1) : "any";
    el = h("input", { ...common, type: "number", step, placeholder: s.default ?? "" });
  } else if (kind === "list") {
    el = h("input", { ...common, type: "text", placeholder: s.default ? s.default.join(", ") : "comma-separated" });
  } else if (kind === "json") {
    el = h("textarea", { ...common, placeholder: s.default !== undefined ? JSON.stringify(s.default) : "JSON" });
  } else {
    el = h("input", { ...common, type: "text", placeholder: s.default ?? "" });
  }
  if (previous !== undefined) el.value = previous;
  return el;
}

const titleCase = (name) => name.split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");

/** Render `fields` into `container`; values already typed (by path) are kept. */
export function renderFields(doc, container, fields, previous = {}, prefix = "") {
  const nodes = [];
  for (const [name, raw] of Object.entries(fields)) {
    if (!prefix && (DATASET_FIELDS.has(name) || name === "method")) continue;
    const s = unwrap(doc, raw);
    const path = prefix + name;
    const kind = kindOf(s);
    // A $ref'd schema's own title is its class name: the field's name reads better.
    const title = raw.title ?? (raw.$ref || raw.allOf ? titleCase(name) : (s.title ?? titleCase(name)));
    if (kind === "group") {
      const group = h("fieldset", { dataset: { group: path } }, h("legend", {}, title));
      if (s.description) group.append(h("p", { class: "hint muted" }, s.description));
      renderFields(doc, group, s.properties, previous, `${path}.`);
      nodes.push(group);
      continue;
    }
    const item = kind === "list" ? unwrap(doc, s.items) : null;
    nodes.push(
      h(
        "div",
        { class: "field", dataset: { field: path } },
        h("label", { for: `field-${path}` }, title),
        control(kind, s, item, path, previous[path]),
        h("div", { class: "hint" }, hintFor(s, item)),
        h("div", { class: "error-text", dataset: { errorFor: path } }),
      ),
    );
  }
  if (prefix) container.append(...nodes);
  else replace(container, nodes);
}

export function typedValues(container) {
  const values = {};
  for (const el of container.querySelectorAll("[data-path]")) values[el.dataset.path] = el.value;
  return values;
}

function parse(el) {
  const raw = el.value.trim();
  switch (el.dataset.kind) {
    case "number":
      // Whole numbers past 2**53 go as their digits: a JavaScript number would round them.
      if (/^-?\d+$/.test(raw) && !Number.isSafeInteger(Number(raw))) return raw;
      return Number.isNaN(Number(raw)) ? raw : Number(raw);
    case "boolean":
      return raw === "true";
    case "list": {
      const items = raw.split(",").map((v) => v.trim()).filter((v) => v !== "");
      // A value that is not a number goes as typed: the server's 422 names the field.
      const numeric = el.dataset.item === "number" || el.dataset.item === "integer";
      return items.map((v) => (numeric && v !== "" && !Number.isNaN(Number(v)) ? Number(v) : v));
    }
    case "json":
      try {
        return JSON.parse(raw);
      } catch {
        return raw; // sent as typed: the server's 422 names the field
      }
    default:
      return raw;
  }
}

/** The request body from the filled fields: nested paths become nested objects. */
export function bodyFrom(container, method) {
  const body = { method };
  for (const el of container.querySelectorAll("[data-path]")) {
    if (el.value.trim() === "") continue;
    const parts = el.dataset.path.split(".");
    let node = body;
    for (const part of parts.slice(0, -1)) node = node[part] ??= {};
    node[parts.at(-1)] = parse(el);
  }
  return body;
}

/** Put each 422 entry beside the field its `loc` names; what names no field is returned. */
export function showFieldErrors(container, detail) {
  clearFieldErrors(container);
  const unplaced = [];
  for (const entry of Array.isArray(detail) ? detail : []) {
    const loc = (entry.loc ?? []).filter((part) => part !== "body");
    let placed = false;
    for (let n = loc.length; n > 0 && !placed; n--) {
      const path = loc.slice(0, n).join(".");
      const target = container.querySelector(`[data-error-for="${CSS.escape(path)}"]`);
      if (target) {
        target.textContent = [target.textContent, entry.msg].filter(Boolean).join("; ");
        target.closest(".field").classList.add("invalid");
        placed = true;
      }
    }
    if (!placed) unplaced.push(entry);
  }
  return unplaced;
}

/** A field's error goes once its value changes: the next answer says whether it is right now. */
export function clearErrorOnInput(container) {
  container.addEventListener("input", (event) => {
    const field = event.target.closest?.(".field");
    if (!field?.classList.contains("invalid")) return;
    field.classList.remove("invalid");
    field.querySelector("[data-error-for]").textContent = "";
  });
}

export function clearFieldErrors(container) {
  for (const el of container.querySelectorAll("[data-error-for]")) el.textContent = "";
  for (const el of container.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
}

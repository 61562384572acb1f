// The saeq feature browser: one page, hash routes, plain DOM (no build step). It reads the API's
// /v1/browser routes, /v1/jobs, /v1/steer and (inspect.js) /v1/features/inspect; text goes in through
// textContent, never as HTML.
"use strict";

const app = document.getElementById("app");
let timer = null; // the jobs page's poller, stopped on every route change

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "style") node.style.cssText = v;
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

// The API key lives in this browser's localStorage, never in an address the server sees: a link
// `#/login?key=...&next=...` (the fragment is not sent) is wiped from history at once and offers
// its key, stored only when the user clicks to sign in with it (see login()).
const KEY = "saeq-api-key";
class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  const resp = await fetch(path, { headers, ...options });
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) throw new Unauthorized(body.detail || "an API key is required");
  if (!resp.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map(d => `${d.field || ""}: ${d.msg}`).join("\n")
      : body.detail || body.error?.message || resp.statusText;
    throw new Error(`HTTP ${resp.status}: ${detail}`);
  }
  return body;
}

const fmt = (v, digits = 3) => v === null || v === undefined ? "–" : Number(v).toFixed(digits);
// a figure and its 95% interval ("0.62 [0.41, 0.80]"), the figure alone where there is none
const ci = (v, e, digits = 3) => e && e.low != null && e.high != null ? `${fmt(v, digits)} [${fmt(e.low, digits)}, ${fmt(e.high, digits)}]` : fmt(v, digits);
const pct = v => v === null || v === undefined ? "–" : `${(100 * v).toFixed(v < 0.01 ? 3 : 2)}%`;
const params = () => new URLSearchParams(location.hash.split("?")[1] || "");
const show = (...nodes) => app.replaceChildren(...nodes);
const failure = e => el("p", { class: "error" }, String(e.message || e));

// --- SAEs -------------------------------------------------------------------------------------

async function saesPage() {
  const { saes } = await api("/v1/browser/saes");
  if (!saes.length) return show(el("h1", {}, "SAEs"), el("p", { class: "muted" }, "No trained SAE yet."));
  const rows = saes.map(s => {
    const ev = s.evaluation, m = ev?.metrics || {}, ch = ev?.checks || {}, ci = ev?.intervals || {};
    const trainCi = s.train_metrics?.intervals || {};  // the train job's held-out figures', before an evaluation
    const elements = ch.completeness && Object.values(ch.completeness)[0];
    const probeCi = ch.probing?.accuracy_ci?.sae?.["1"];
    const probe = ch.probing && ch.probing.n_topics ? [`SAE ${fmt(ch.probing.sae["1"], 2)} / raw ${fmt(ch.probing.raw["1"], 2)}`,
      probeCi && probeCi.low !== null ? el("div", { class: "ci muted" }, `SAE [${fmt(probeCi.low, 2)}, ${fmt(probeCi.high, 2)}] n=${probeCi.n}`) : ""] : "–";
    const covered = elements ? [`${elements.n_covered}/${elements.n_members}`, elements.coverage_ci?.low != null
      ? el("div", { class: "ci muted" }, `[${fmt(elements.coverage_ci.low, 2)}, ${fmt(elements.coverage_ci.high, 2)}]`) : ""] : "–";
    const browse = s.label_jobs.filter(l => l.browsable).map(l =>
      el("div", {}, el("a", { href: `#/features/${l.job_id}` }, `features (${l.job_id.slice(0, 8)})`)));
    return el("tr", {},
      el("td", {}, el("b", {}, s.name), el("div", { class: "muted" }, `${s.architecture}, ${s.hook}`)),
      el("td", {}, s.job_name || s.train_job.slice(0, 8)),
      el("td", { class: "num" }, s.d_sae), ciCell(m.fvu ?? s.train_metrics?.fvu, m.fvu != null ? ci.fvu : trainCi.fvu),
      ciCell(m.l0 ?? s.train_metrics?.l0, m.l0 != null ? ci.l0 : trainCi.l0, 1), ciCell(m.ce_loss_recovered, ci.ce_loss_recovered),
      el("td", { class: "num" }, covered),
      el("td", {}, probe),
      el("td", {}, browse.length ? browse : el("span", { class: "muted" }, "no label job"),
         el("div", {}, el("a", { href: `#/steer?train=${s.train_job}&name=${encodeURIComponent(s.name)}` }, "steer")),
         el("div", {}, el("a", { href: `#/inspect?train=${s.train_job}&name=${encodeURIComponent(s.name)}` }, "inspect a text"))));
  });
  show(el("h1", {}, "SAEs"), el("table", { id: "saes" },
    el("thead", {}, el("tr", {}, ["SAE", "job", "latents", "FVU", "L0", "CE recovered", "elements covered",
      "probing k=1", ""].map(h => el("th", {}, h)))), el("tbody", {}, rows)),
    el("p", { class: "muted" }, "Under each figure: its 95% interval and n (bootstrap over contexts; Wilson for proportions)."),
    ...saes.filter(s => s.evaluation).map(evaluationPanel));
}

// --- feature list -----------------------------------------------------------------------------

// Each scorer's control accuracy (the label job's judge controls); an uncalibrated one is flagged.
function judgeControls(controls) {
  if (!controls) return el("p", { class: "muted" }, "No judge controls (a label job from before they were run).");
  return el("div", { id: "judge-controls" }, controls.map(c => el("div", { class: c.calibrated ? "muted" : "error" },
    `${c.scorer} judge ${c.judge}: control accuracy ${est(c.accuracy, 2)}, chance ${c.chance} — `,
    c.calibrated ? "calibrated: its scores count" : el("b", {}, c.flag))));
}

async function featuresPage(labelJob) {
  const p = params();
  const state = { q: p.get("q") || "", sort: p.get("sort") || "density", order: p.get("order") || "desc",
                  labelled: p.get("labelled") === "1", page: Number(p.get("page") || 0) };
  const size = 50;
  const query = new URLSearchParams({ sort: state.sort, order: state.order, offset: state.page * size, limit: size,
                                      labelled: state.labelled });
  if (state.q) query.set("q", state.q);
  const data = await api(`/v1/browser/labels/${labelJob}/features?${query}`);
  const go = changes => {
    const next = { ...state, ...changes };
    const qs = new URLSearchParams({ q: next.q, sort: next.sort, order: next.order, labelled: next.labelled ? 1 : 0, page: next.page });
    location.hash = `#/features/${labelJob}?${qs}`;
  };
  const search = el("input", { type: "search", placeholder: "search labels or a feature number", value: state.q, size: 34 });
  search.addEventListener("keydown", e => { if (e.key === "Enter") go({ q: search.value, page: 0 }); });
  const sort = el("select", { on: { change: e => go({ sort: e.target.value, page: 0 }) } },
    ["density", "score", "max_activation", "feature"].map(s => el("option", { value: s, selected: s === state.sort }, `sort: ${s}`)));
  const order = el("select", { on: { change: e => go({ order: e.target.value, page: 0 }) } },
    ["desc", "asc"].map(o => el("option", { value: o, selected: o === state.order }, o)));
  const labelled = el("input", { type: "checkbox", checked: state.labelled, on: { change: e => go({ labelled: e.target.checked, page: 0 }) } });
  const pages = Math.max(1, Math.ceil(data.total / size));
  const rows = data.features.map(f => el("tr", {},
    el("td", { class: "num" }, el("a", { href: `#/feature/${labelJob}/${f.feature}` }, f.feature)),
    el("td", {}, f.label ?? el("span", { class: "muted" }, "unlabelled")),
    el("td", { class: "num" }, pct(f.density)), el("td", { class: "num" }, fmt(f.max_activation, 2)),
    el("td", { class: "num" }, fmt(f.score, 2))));
  show(el("h1", {}, `Features of ${data.sae.name} `, el("span", { class: "muted" }, `(label job ${labelJob.slice(0, 8)})`)),
    el("div", { class: "controls" }, search, el("button", { on: { click: () => go({ q: search.value, page: 0 }) } }, "Search"),
      sort, order, el("label", {}, labelled, " labelled only"),
      el("span", { class: "muted", id: "total" }, `${data.total.toLocaleString()} features`)),
    judgeControls(data.judge_controls), densityBins(data.density_bins),
    el("table", { id: "features" }, el("thead", {}, el("tr", {}, ["feature", "label", "density", "max act", "score (AUC)"].map(h => el("th", {}, h)))),
      el("tbody", {}, rows)),
    el("div", { class: "controls" },
      el("button", { disabled: state.page === 0, on: { click: () => go({ page: state.page - 1 }) } }, "‹ previous"),
      el("span", {}, `page ${state.page + 1} of ${pages}`),
      el("button", { disabled: state.page + 1 >= pages, on: { click: () => go({ page: state.page + 1 }) } }, "next ›")));
}

// --- feature page -----------------------------------------------------------------------------

function shaded(win, max) {
  return el("div", { class: "window" }, win.tokens.map((t, i) => {
    const a = win.acts[i];
    const alpha = max > 0 ? Math.min(1, a / max) : 0;
    return el("span", { class: "tok", "data-act": a > 0 ? a.toFixed(2) : null, title: a > 0 ? `activation ${a.toFixed(3)}` : null,
                        style: a > 0 ? `background: rgba(249, 115, 22, ${(0.15 + 0.85 * alpha).toFixed(3)})` : "" }, t);
  }));
}

function histogram(counts, edges) {
  if (!counts.length) return el("p", { class: "muted" }, "never fires on the indexed text");
  const W = 480, H = 120, top = Math.max(...counts), bw = W / counts.length;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "hist"); svg.setAttribute("width", W); svg.setAttribute("height", H + 18);
  counts.forEach((c, i) => {
    const h = top ? (H * c) / top : 0;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    Object.entries({ x: i * bw + 1, y: H - h, width: bw - 2, height: h }).forEach(([k, v]) => r.setAttribute(k, v));
    const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
    tip.textContent = `${fmt(edges[i], 2)}–${fmt(edges[i + 1], 2)}: ${c}`;
    r.append(tip); svg.append(r);
  });
  const axis = document.createElementNS("http://www.w3.org/2000/svg", "text");
  axis.setAttribute("x", 0); axis.setAttribute("y", H + 14); axis.setAttribute("font-size", 11);
  axis.textContent = `activation 0 … ${fmt(edges[edges.length - 1], 2)} (non-zero activations only)`;
  svg.append(axis);
  return svg;
}

// What a coder reads and writes (label jobs before coders carry neither: nothing shown).
function coderSites(f) {
  if (!f.reads || !f.writes) return "";
  const same = f.reads.join() === f.writes.join();
  const text = same ? `reads and writes ${f.reads.join(", ")}` : `reads ${f.reads.join(", ")} · writes ${f.writes.join(", ") || "(unknown)"}`;
  const acausal = f.reads.length > 1 ? " · a crosscoder: steer it with add (clamp, ablate and scale are refused)" : "";
  return el("p", { id: "coder-sites", class: "muted" }, text, f.logit_effects_from && !same ? ` · logit effects from ${f.logit_effects_from}` : "", acausal);
}

// A label job with carry_from: this feature's match in the other SAE (docs/labels.md, "Carrying labels")
function otherSae(o) {
  if (!o) return "";
  const strength = `decoder cosine ${fmt(o.decoder_cosine, 3)}` +
    (o.activation_correlation != null ? `, activation correlation ${fmt(o.activation_correlation, 3)}` : `, ${o.method}`);
  return el("div", { id: "other-sae", class: "card" },
    el("div", {}, "This feature in the other SAE: ",
      el("a", { href: `#/feature/${o.label_job}/${o.feature}` }, `feature ${o.feature} of label job ${o.label_job.slice(0, 8)}`),
      el("span", { class: "muted" }, ` (${strength}; ${o.stable ? "stable" : "not stable: no label carried"})`)),
    o.label ? el("div", {}, el("b", { class: "label carried" }, o.label), el("span", { class: "muted" }, "  carried from the other SAE, not scored here")) : "");
}

async function featurePage(labelJob, feature) {
  const f = await api(`/v1/browser/labels/${labelJob}/features/${feature}`);
  const max = f.max_activation;
  const labels = f.records.length ? f.records.map(r => el("div", { class: "card" },
    el("div", {}, el("b", { class: "label" }, r.label), el("span", { class: "muted" }, `  by ${r.explainer}`)),
    el("div", {}, r.description),
    el("div", { class: "muted" }, Object.entries(r.scores || {}).map(([k, s]) =>
      `${k}: AUC ${ci(s.auc, (s.intervals || {}).auc, 2)}` +
      (s.balanced_accuracy != null ? `, balanced accuracy ${ci(s.balanced_accuracy, (s.intervals || {}).balanced_accuracy, 2)}` : "") +
      (s.n ? ` (n=${s.n} windows${s.intervals ? ", 95% intervals over them" : ", no interval"})` : "")).join(" · "))))
    : [el("p", { class: "muted" }, "Not labelled by this job.")];
  const effects = (list, title) => el("div", {}, el("h2", {}, title), el("table", {},
    el("tbody", {}, (list || []).map(([tok, v]) => el("tr", {}, el("td", {}, el("code", {}, JSON.stringify(tok))), el("td", { class: "num" }, fmt(v, 3)))))));
  const cal = f.calibration;  // a steer job's calibrated strength for this label (docs/steer.md)
  // a crosscoder cannot be clamped (docs/steer.md, "Coders"): its playground link adds
  const steerMode = cal ? cal.mode : (f.reads && f.reads.length > 1 ? "add" : "clamp"), steerValue = cal ? Number(cal.value).toFixed(1) : (2 * max).toFixed(1);
  const calibration = cal
    ? el("p", { id: "calibration" }, `calibrated strength: ${cal.mode} ${fmt(cal.value, 2)} (${fmt(cal.multiple, 2)}x max activation`,
        cal.met ? ", reached the concept within budget" : ", did NOT reach the concept within budget", "; ",
        el("a", { href: `/v1/jobs/${cal.steer_job}` }, `steer job ${cal.steer_job.slice(0, 8)}`), ")")
    : el("p", { id: "calibration", class: "muted" }, "no calibrated strength (a steer job with calibrate makes one); steering defaults to a clamp at 2x the max activation");
  show(
    el("h1", {}, `Feature ${f.feature} `, el("span", { class: "muted" }, `of ${f.sae.name}`)),
    coderSites(f),
    el("p", {}, `density ${pct(f.density)} · max activation ${fmt(max, 2)} · ${f.n_activations.toLocaleString()} activations indexed · `,
      el("a", { href: `#/steer?train=${f.train_job}&name=${encodeURIComponent(f.sae.name)}&f=${f.feature}&mode=${steerMode}&value=${steerValue}` }, "steer with it"),
      " · ", el("a", { href: `#/inspect?train=${f.train_job}&name=${encodeURIComponent(f.sae.name)}&label=${labelJob}&f=${f.feature}` }, "inspect a text"),
      " · ", el("a", { href: `#/features/${labelJob}` }, "all features")),
    calibration, ...labels, otherSae(f.other_sae), judgeControls(f.judge_controls),
    el("h2", {}, "Activation histogram"), histogram(f.histogram, f.histogram_edges),
    el("h2", {}, "Top activations"), el("div", { id: "top" }, f.top.map(w => shaded(w, max))),
    el("h2", {}, "Samples across the activation range (lowest quantile first)"),
    el("div", { id: "quantiles" }, f.quantiles.map((bin, i) => el("div", {},
      el("div", { class: "muted" }, `quantile ${i + 1} of ${f.quantiles.length}`), bin.map(w => shaded(w, max))))),
    el("div", { class: "columns" }, effects(f.logit_effects?.positive, "Logits it raises most"),
      effects(f.logit_effects?.negative, "Logits it lowers most")));
}

// --- jobs -------------------------------------------------------------------------------------

async function jobsPage() {
  const table = el("tbody");
  const draw = async () => {
    const { jobs } = await api("/v1/jobs?limit=50");
    table.replaceChildren(...jobs.map(j => {
      const p = j.progress || {};
      const frac = Math.max(0, Math.min(1, p.fraction ?? (j.state === "succeeded" ? 1 : 0)));
      return el("tr", { "data-job": j.id },
        el("td", {}, j.id.slice(0, 8)), el("td", {}, j.kind), el("td", {}, j.name || ""),
        el("td", { class: "state" }, j.state),
        el("td", {}, el("span", { class: "bar" }, el("span", { style: `width: ${(100 * frac).toFixed(0)}%` })),
          ` ${(100 * frac).toFixed(0)}% `, el("span", { class: "muted" }, p.message || j.error?.message || "")));
    }));
  };
  show(el("h1", {}, "Jobs ", el("span", { class: "muted" }, "(live)")), el("table", {},
    el("thead", {}, el("tr", {}, ["job", "kind", "name", "state", "progress"].map(h => el("th", {}, h)))), table));
  await draw();
  timer = setInterval(() => draw().catch(() => {}), 2000);
}

// --- steering ---------------------------------------------------------------------------------

function steerPage() {
  const p = params();
  const train = el("input", { name: "train", value: p.get("train") || "", size: 34, placeholder: "train job id" });
  const name = el("input", { name: "name", value: p.get("name") || "", size: 16, placeholder: "SAE name (optional)" });
  const prompt = el("textarea", { name: "prompt", rows: 3, cols: 70 }, "Tell me about your weekend.");
  const rows = el("tbody");
  const addRow = (feature = "", mode = "clamp", value = "") => rows.append(el("tr", {},
    el("td", {}, el("input", { name: "feature", type: "number", min: 0, value: feature, size: 7 })),
    el("td", {}, el("select", { name: "mode" }, ["clamp", "add", "cap", "scale", "ablate"].map(m => el("option", { value: m, selected: m === mode }, m)))),
    el("td", {}, el("input", { name: "value", type: "number", step: "any", value: value, size: 8 }))));
  addRow(p.get("f") || "", p.get("mode") || "clamp", p.get("value") || "");
  const tokens = el("input", { name: "max_new_tokens", type: "number", min: 1, max: 512, value: 32, size: 5 });
  const out = { default: el("pre", { class: "out", id: "default" }), steered: el("pre", { class: "out", id: "steered" }),
                figures: el("p", { class: "muted", id: "figures" }), error: el("p", { class: "error", id: "error" }) };
  const run = el("button", { id: "run" }, "Generate");
  run.addEventListener("click", async () => {
    out.error.textContent = ""; out.steered.textContent = out.default.textContent = "…"; run.disabled = true;
    const interventions = [...rows.children].map(tr => ({
      feature: Number(tr.querySelector("[name=feature]").value), mode: tr.querySelector("[name=mode]").value,
      value: Number(tr.querySelector("[name=value]").value || 0) })).filter((e, i, all) => rows.children[i].querySelector("[name=feature]").value !== "");
    try {
      const sae = { job_id: train.value.trim() };
      if (name.value.trim()) sae.name = name.value.trim();
      const r = await api("/v1/steer", { method: "POST", body: JSON.stringify({
        sae, prompt: prompt.value, interventions, max_new_tokens: Number(tokens.value) }) });
      out.default.textContent = r.default ?? "";
      out.steered.textContent = r.steered;
      const iv = r.intervals || {};  // 95% intervals over the generated tokens (a lower bound on the spread)
      out.figures.textContent = `KL from default ${ci(r.kl_from_default, iv.kl_from_default)} nats/token · perplexity under the unsteered model ${ci(r.perplexity_unsteered, iv.perplexity_unsteered, 1)} · ${fmt(r.seconds, 1)} s`;
    } catch (e) { out.error.textContent = e.message; out.steered.textContent = out.default.textContent = ""; }
    finally { run.disabled = false; }
  });
  show(el("h1", {}, "Steering playground"),
    el("div", { class: "controls" }, "SAE ", train, name),
    el("div", {}, prompt),
    el("table", { style: "width: auto" }, el("thead", {}, el("tr", {}, ["feature", "mode", "value"].map(h => el("th", {}, h)))), rows),
    el("div", { class: "controls" }, el("button", { on: { click: () => addRow() } }, "+ feature"), "max new tokens ", tokens, run),
    out.error,
    el("div", { class: "columns" }, el("div", {}, el("h2", {}, "Default"), out.default), el("div", {}, el("h2", {}, "Steered"), out.steered)),
    out.figures);
}

// --- routing ----------------------------------------------------------------------------------

function signInPage(message) {
  const input = el("input", { type: "password", name: "api_key", placeholder: "saeq_…", size: 60, autocomplete: "off" });
  const submit = e => {
    e.preventDefault();
    localStorage.setItem(KEY, input.value.trim());
    route();
  };
  show(el("h1", {}, "Sign in"), el("p", { class: "muted" }, message),
    el("form", { id: "signin", on: { submit } }, input, " ", el("button", { type: "submit" }, "Sign in")));
}

// Anyone can send a login link with a key of their own team, and a page that opened this one can
// also set its fragment (`#/logout`, then `#/login?key=`). Had a link stored its key by itself,
// what the user did next (uploads, jobs) would go to the sender's team. So a link only offers its
// key: it names the key's team, and nothing is stored until the user clicks "Sign in as team X".
const ARM_MS = 800; // the sign-in button waits this long, so a click aimed elsewhere cannot land on it

async function whoIs(key) {
  const r = await fetch("/v1/me", { headers: { Authorization: `Bearer ${key}` } }).catch(() => null);
  return r && r.ok ? r.json() : null;
}

function login() {
  const p = params();
  const key = (p.get("key") || "").trim();
  const next = p.get("next") || "/";
  history.replaceState(null, "", `${location.pathname}#${next}`); // the key leaves the address bar
  const stored = localStorage.getItem(KEY);
  if (!key || key === stored) return route();
  const text = el("p", {}, "Checking the link's API key…");
  const choice = el("div", { id: "switch-key", class: "controls" },
    el("button", { id: "keep-key", on: { click: () => route() } }, stored ? "Keep my key" : "Cancel"));
  const page = el("div", {}, el("h1", {}, "Sign in from a link?"), text, choice);
  show(page);
  Promise.all([whoIs(key), stored ? whoIs(stored) : null]).then(([them, me]) => {
    if (!page.isConnected) return; // the user (or the opener) went elsewhere meanwhile
    if (!them) return text.replaceChildren("This link's API key is not accepted here (revoked, or not a key of this ",
      "server): nothing changed.");
    const team = `team “${them.team}”${them.role === "admin" ? " (admin)" : ""}`;
    text.replaceChildren(`This link signs this browser in with an API key of ${team} (key id ${them.key_id}). `,
      stored ? `It would replace the key stored here${me ? ` (team “${me.team}”, key id ${me.key_id})` : ""}. ` : "",
      `Everything you do next (uploads, jobs, steering) would act for ${team}: sign in only if you expected this link.`);
    const use = el("button", { id: "use-link-key", disabled: true,
                              on: { click: () => { localStorage.setItem(KEY, key); route(); } } }, `Sign in as ${team}`);
    choice.prepend(use, " ");
    setTimeout(() => { use.disabled = false; }, ARM_MS);
  });
}

// A `#/logout` address only asks: signing out is one click on its button, never the fragment.
function logoutPage() {
  if (!localStorage.getItem(KEY)) return signInPage("Not signed in.");
  const signOut = () => {
    localStorage.removeItem(KEY);
    history.replaceState(null, "", `${location.pathname}#/`); // signing in again lands on the SAEs
    signInPage("Signed out.");
  };
  show(el("h1", {}, "Sign out?"), el("p", {}, "This forgets the API key stored in this browser."),
    el("div", { class: "controls" }, el("button", { id: "sign-out", on: { click: signOut } }, "Sign out"), " ",
      el("button", { id: "stay", on: { click: () => { location.hash = "#/"; } } }, "Cancel")));
}

async function route() {
  clearInterval(timer);
  const path = (location.hash.slice(1) || "/").split("?")[0].split("/").filter(Boolean);
  try {
    if (path[0] === "login") return login();
    if (path[0] === "logout") return logoutPage();
    if (path[0] === "features" && path[1]) await featuresPage(path[1]);
    else if (path[0] === "feature" && path[1] && path[2]) await featurePage(path[1], path[2]);
    else if (path[0] === "jobs") await jobsPage();
    else if (path[0] === "steer") steerPage();
    else if (path[0] === "inspect") inspectPage(); // static/inspect.js
    else if (path[0] === "contrast") contrastPage(); // static/contrast.js
    else await saesPage();
  } catch (e) {
    if (e instanceof Unauthorized) signInPage(`${e.message}. Paste an API key of your team.`);
    else show(failure(e));
  }
}

window.addEventListener("hashchange", route);
route();

// The inspect page (#/inspect?train=...): type a text, see which features of an SAE fire on each
// token (POST /v1/features/inspect), tokens shaded by a chosen feature, each token's top features
// linked to their feature pages. Loaded before browser.js, whose helpers (el, api, fmt, params,
// show) it uses when the page is drawn.
"use strict";

const LAST_TEXT = "saeq-inspect-text";

function inspectPage() {
  const p = params();
  const train = el("input", { name: "train", value: p.get("train") || "", size: 34, placeholder: "train job id" });
  const name = el("input", { name: "name", value: p.get("name") || "", size: 16, placeholder: "SAE name (optional)" });
  // The last text inspected in this tab comes back (from a feature page's "inspect a text" link).
  const text = el("textarea", { name: "text", rows: 4, cols: 70 },
    p.get("text") || sessionStorage.getItem(LAST_TEXT) || "The Golden Gate Bridge spans the strait.");
  const shade = el("input", { name: "shade", type: "number", min: 0, value: p.get("f") || "", size: 7, placeholder: "feature" });
  const topK = el("input", { name: "top_k", type: "number", min: 1, max: 64, value: 5, size: 4 });
  const tokens = el("div", { class: "window", id: "tokens" });
  const table = el("tbody", { id: "per-token" });
  const figures = el("p", { class: "muted", id: "inspect-figures" });
  const error = el("p", { class: "error", id: "error" });
  const run = el("button", { id: "inspect" }, "Inspect");
  const go = async () => {
    error.textContent = ""; figures.textContent = "…"; run.disabled = true;
    const sae = { job_id: train.value.trim() };
    if (name.value.trim()) sae.name = name.value.trim();
    const body = { sae, text: text.value, top_k: Number(topK.value) };
    sessionStorage.setItem(LAST_TEXT, text.value);
    if (p.get("label")) body.label_job = p.get("label");
    if (shade.value !== "") body.features = [Number(shade.value)];
    try {
      draw(await api("/v1/features/inspect", { method: "POST", body: JSON.stringify(body) }));
    } catch (e) { error.textContent = e.message; figures.textContent = ""; tokens.replaceChildren(); table.replaceChildren(); }
    finally { run.disabled = false; }
  };
  // A feature's "shade" button: shade the text by it (one more request: its activation on every token).
  const shadeBy = f => { shade.value = f; go(); };
  const draw = r => {
    const acts = r.tokens.map(t => (t.activations ? t.activations[0] : 0));
    const max = Math.max(0, ...acts);
    tokens.replaceChildren(...r.tokens.map((t, i) => {
      if (t.sink) return el("span", { class: "tok sink", title: `sink (${t.sink === "position0" ? "position 0" : "norm outlier"}): left out` }, t.text);
      const a = acts[i], alpha = max > 0 ? a / max : 0;
      return el("span", { class: "tok", "data-act": r.features && a > 0 ? a.toFixed(2) : null, title: r.features ? `feature ${r.features[0]}: ${fmt(a, 3)}` : null,
                          style: r.features && a > 0 ? `background: rgba(249, 115, 22, ${(0.15 + 0.85 * alpha).toFixed(3)})` : "" }, t.text);
    }));
    table.replaceChildren(...r.tokens.map(t => el("tr", { "data-position": t.position },
      el("td", { class: "num" }, t.position), el("td", {}, el("code", {}, JSON.stringify(t.text))),
      el("td", {}, t.sink ? el("span", { class: "muted" }, `sink (${t.sink === "position0" ? "position 0" : "norm outlier"}): left out`)
        : t.top.map(f => el("div", { class: "feat" },
          f.link ? el("a", { href: f.link.replace(/^\/browse/, "") }, `#${f.feature}`) : `#${f.feature}`,
          ` ${fmt(f.activation, 3)} `, f.label ? el("span", { class: "label" }, f.label) : el("span", { class: "muted" }, "unlabelled"), " ",
          el("button", { class: "shade", title: "shade the text by this feature", on: { click: () => shadeBy(f.feature) } }, "shade")))))));
    figures.textContent = `${r.tokens.length} tokens, ${r.n_sinks} sinks left out · ${r.sae.name ?? ""} at ${r.hook} · `
      + `labels: ${r.label_job ? r.label_job.slice(0, 8) : "no label job"} · ${fmt(r.seconds, 2)} s`;
  };
  run.addEventListener("click", go);
  show(el("h1", {}, "Features of a text"),
    el("div", { class: "controls" }, "SAE ", train, name),
    el("div", {}, text),
    el("div", { class: "controls" }, "shade by feature ", shade, "top features per token ", topK, run),
    error, el("h2", {}, "Tokens"), tokens, figures,
    el("h2", {}, "Top features of each token"),
    el("table", {}, el("thead", {}, el("tr", {}, ["pos", "token", "features (activation, label)"].map(h => el("th", {}, h)))), table));
  if (train.value) go();
}

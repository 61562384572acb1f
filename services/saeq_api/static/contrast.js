// The contrast page (#/contrast?train=...): two sets of texts (one a line, or a builtin corpus's
// topic) -> the SAE's features that separate them (POST /v1/features/contrast), each with its
// held-out AUROC and Cohen's d and their 95% intervals, linked to the feature pages. Loaded before
// browser.js, whose helpers (el, api, fmt, params, show) it uses when the page is drawn.
"use strict";

const TOPICS = ["Arts", "Biology and health sciences", "Everyday life", "Geography", "History", "Mathematics", "People",
  "Philosophy and religion", "Physical sciences", "Society and social sciences", "Technology", "Uncategorized"];

function contrastPage() {
  const p = params();
  const train = el("input", { name: "train", value: p.get("train") || "", size: 34, placeholder: "train job id" });
  const name = el("input", { name: "name", value: p.get("name") || "", size: 16, placeholder: "SAE name (optional)" });
  // A side is a topic of the builtin English articles, or (topic left at "texts below") the lines typed.
  const side = (key, topic) => {
    const choice = el("select", { name: `${key}-topic` }, el("option", { value: "" }, "texts below (one a line)"),
      ...TOPICS.map(t => el("option", { value: t, selected: t === topic }, t)));
    const texts = el("textarea", { name: `${key}-texts`, rows: 6, cols: 50 });
    return { choice, texts, body: () => choice.value ? { corpus: "wiki-en", topic: choice.value, max_docs: Number(docs.value) }
      : { texts: texts.value.split("\n").filter(t => t.trim()) } };
  };
  const docs = el("input", { name: "docs", type: "number", min: 4, max: 256, value: 64, size: 4 });
  const a = side("a", p.get("a") || "Physical sciences"), b = side("b", p.get("b") || "People");
  const topK = el("input", { name: "top_k", type: "number", min: 1, max: 64, value: 10, size: 4 });
  const aggregate = el("select", { name: "aggregate" }, el("option", { value: "max" }, "max"), el("option", { value: "mean" }, "mean"));
  const results = el("div", { id: "contrast-results" });
  const figures = el("p", { class: "muted", id: "contrast-figures" });
  const error = el("p", { class: "error", id: "error" });
  const run = el("button", { id: "contrast" }, "Find separating features");
  const interval = e => e ? `${fmt(e.value, 3)} [${fmt(e.low, 3)}, ${fmt(e.high, 3)}]` : "–";
  const table = (title, features, labelJob) => [el("h2", {}, title),
    el("table", { class: "contrast", "data-side": title.slice(-1) },
      el("thead", {}, el("tr", {}, ["feature", "label", "AUROC (selection)", "AUROC held out [95%]", "Cohen's d held out [95%]", "mean a", "mean b"]
        .map(h => el("th", {}, h)))),
      el("tbody", {}, ...features.map(f => el("tr", { "data-feature": f.feature, class: f.held_out_auroc.low > 0.5 ? "holds" : "" },
        el("td", {}, f.link ? el("a", { href: f.link.replace(/^\/browse/, "") }, `#${f.feature}`) : `#${f.feature}`),
        el("td", {}, f.label ? el("span", { class: "label" }, f.label) : el("span", { class: "muted" }, labelJob ? "unlabelled" : "no label job")),
        el("td", { class: "num" }, fmt(f.selection_auroc, 3)), el("td", { class: "num auroc" }, interval(f.held_out_auroc)),
        el("td", { class: "num" }, f.held_out_cohens_d ? interval(f.held_out_cohens_d) : "–"),
        el("td", { class: "num" }, fmt(f.mean_a, 3)), el("td", { class: "num" }, fmt(f.mean_b, 3))))))];
  const go = async () => {
    error.textContent = ""; figures.textContent = "…"; run.disabled = true;
    const sae = { job_id: train.value.trim() };
    if (name.value.trim()) sae.name = name.value.trim();
    const body = { sae, a: a.body(), b: b.body(), top_k: Number(topK.value), aggregate: aggregate.value };
    if (p.get("label")) body.label_job = p.get("label");
    try {
      const r = await api("/v1/features/contrast", { method: "POST", body: JSON.stringify(body) });
      results.replaceChildren(...table("Higher on a", r.higher_on_a, r.label_job), ...table("Higher on b", r.higher_on_b, r.label_job));
      figures.textContent = `${r.n_texts.a} vs ${r.n_texts.b} texts, ${r.n_held_out.a} + ${r.n_held_out.b} held out · `
        + `per-text ${r.aggregate} · ${r.n_tokens} tokens (${r.n_cut} texts cut) · ${r.sae.name ?? ""} at ${r.hook} · `
        + `labels: ${r.label_job ? r.label_job.slice(0, 8) : "no label job"} · ${fmt(r.seconds, 2)} s`;
    } catch (e) { error.textContent = e.message; figures.textContent = ""; results.replaceChildren(); }
    finally { run.disabled = false; }
  };
  run.addEventListener("click", go);
  show(el("h1", {}, "Features that separate two sets of texts"),
    el("p", { class: "muted" }, "Chosen on half of each set; AUROC and Cohen's d measured on the other half, with 95% bootstrap intervals. "
      + "A held-out AUROC interval above 0.5 is a feature that tells the sets apart on texts it was not chosen on."),
    el("div", { class: "controls" }, "SAE ", train, name),
    el("div", { class: "controls" }, "set a ", a.choice, " set b ", b.choice, " documents per topic ", docs),
    el("div", { class: "controls" }, a.texts, b.texts),
    el("div", { class: "controls" }, "per-text ", aggregate, " features each way ", topK, run),
    error, figures, results);
}

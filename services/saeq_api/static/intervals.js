// Figures with their 95% intervals and n, for browser.js's pages: an SAE's evaluation (metrics and
// checks) and a label job's mean scores per density bin. Uses browser.js's el, fmt and pct (called
// only after every script has loaded).
"use strict";

// An Estimate (value, low, high, n, unit): "0.174 [0.168, 0.180] (n=512 contexts)"; null bounds
// (JSON has no NaN) say there is no interval.
const est = (e, digits = 3) => !e ? "–" : e.low === null || e.high === null
  ? `${fmt(e.value, digits)} (n=${e.n.toLocaleString()} ${e.unit}, no interval)`
  : `${fmt(e.value, digits)} [${fmt(e.low, digits)}, ${fmt(e.high, digits)}] (n=${e.n.toLocaleString()} ${e.unit})`;
// A table cell: the figure, its interval and n under it when the result has one.
const ciCell = (value, e, digits = 3) => el("td", { class: "num" }, fmt(value, digits),
  e && e.low !== null && e.high !== null ? el("div", { class: "ci muted" }, `[${fmt(e.low, digits)}, ${fmt(e.high, digits)}] n=${e.n}`) : "");

// Every figure of an SAE's latest evaluation with its interval, and its checks (saeq report's lines).
const METRICS = [["fvu", "FVU (ordinary tokens)", 4], ["explained_variance", "explained variance", 4], ["mse", "MSE", 4],
  ["cossim", "cosine similarity", 4], ["l0", "L0", 2], ["dead_fraction", "dead latents (fraction)", 4],
  ["dense_fraction", "dense latents (fraction)", 4], ["ce_loss_recovered", "CE-loss recovered", 4],
  ["ce_loss_clean", "CE clean (nats)", 4], ["ce_loss_with_sae", "CE with SAE (nats)", 4],
  ["ce_loss_with_ablation", "CE zero-ablated (nats)", 4], ["delta_lm_loss", "delta LM loss (nats)", 4],
  ["kl_div_with_sae", "KL with SAE (nats)", 4]];

function checkLines(ch) {
  const out = [], sp = ch.specificity;
  if (sp && sp.skipped) out.push(`specificity: skipped (${sp.skipped})`);
  else if (sp) {
    out.push(`specificity (${sp.rater}, ${sp.n_features} features): mean Spearman ${sp.mean_spearman_ci ? est(sp.mean_spearman_ci) : fmt(sp.mean_spearman)}`);
    if (sp.rater_control) out.push(el("span", { class: sp.flag ? "error" : "" },
      `  rater control accuracy ${est(sp.rater_control.accuracy, 2)}, chance ${sp.rater_control.chance} — `,
      sp.flag ? el("b", {}, sp.flag) : "calibrated: its ratings count"));
  }
  for (const [lang, s] of Object.entries(ch.sensitivity || {}))
    out.push(`sensitivity en→${lang}: pooled recall ${s.pooled_recall_ci ? est(s.pooled_recall_ci) : fmt(s.pooled_recall)}, ` +
      `mean recall ${s.mean_recall_ci ? est(s.mean_recall_ci) : fmt(s.mean_recall)}`);
  for (const [name, s] of Object.entries(ch.completeness || {}))
    out.push(`completeness, ${name}: ${s.n_covered}/${s.n_members} covered, coverage ${s.coverage_ci ? est(s.coverage_ci) : fmt(s.coverage)}`);
  const pr = ch.probing;
  if (pr && pr.n_topics) for (const k of Object.keys(pr.sae)) {
    const c = pr.accuracy_ci?.sae?.[k];
    out.push(`sparse probing k=${k}: SAE accuracy ${c ? est(c) : fmt(pr.sae[k])}, raw ${fmt(pr.raw[k])}`);
  }
  return out;
}

function evaluationPanel(s) {
  const ev = s.evaluation, ci = ev.intervals || {};
  const rows = METRICS.filter(([k]) => k in ev.metrics).map(([k, label, d]) => el("tr", {}, el("td", {}, label),
    el("td", { class: "num" }, ci[k] ? est(ci[k], d) : fmt(ev.metrics[k], d))));
  return el("div", { class: "evaluation", id: `evaluation-${s.train_job}-${s.name}` },
    el("h2", {}, `Evaluation of ${s.name} `, el("span", { class: "muted" }, `(evaluate job ${ev.job_id.slice(0, 8)})`)),
    el("table", { style: "width: auto" }, el("thead", {}, el("tr", {}, el("th", {}, "metric"), el("th", {}, "value [95% interval] (n)"))),
      el("tbody", {}, rows)),
    ev.checks ? el("div", { class: "checks" }, checkLines(ev.checks).map(line => el("div", {}, line))) : "");
}

// The label job's mean AUC per density bin, each with its bootstrap interval over the bin's features.
function densityBins(bins) {
  if (!bins || !bins.length) return "";
  const pairs = [...new Map(bins.flatMap(b => b.scores.map(s => [`${s.explainer} ${s.scorer}`, s]))).keys()];
  return el("table", { id: "density-bins", style: "width: auto" },
    el("thead", {}, el("tr", {}, ["density bin", "labelled / eligible", ...pairs.map(p => `mean AUC: ${p}`)].map(h => el("th", {}, h)))),
    el("tbody", {}, bins.map(b => el("tr", {}, el("td", {}, `${pct(b.low)}–${pct(b.high)}`), el("td", { class: "num" }, `${b.n_labelled} / ${b.n_eligible}`),
      pairs.map(p => {
        const s = b.scores.find(x => `${x.explainer} ${x.scorer}` === p);
        return el("td", { class: s?.flag ? "error" : "num", title: s?.flag || null }, s ? est(s.auc, 2) + (s.flag ? " !" : "") : "–");
      })))));
}

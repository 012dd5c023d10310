"""The reproduction study's summary and outputs: mean ± std per (regime, init, variant), reproduce.md, plots.

Public: aggregate(runs, cfg, inits) -> list[dict], paired_differences(runs, regime, init, variant_a, variant_b,
key) -> list[float], render_markdown(result) -> str,
write_outputs(result, cfg, *, final) -> dict (reproduce.json, reproduce.md; the plots when final).
The claims section reads CONTRACT.md §7 off the table: differences of means and whether they exceed
the sum of the two standard deviations; nothing is claimed beyond that.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from skd.core.studies.engine import write_json_atomic
from skd.core.studies.report import fmt_pm, markdown_table, mean_std, save_plot, start_end_text
from skd.core.studies.reproduce import (CORRECTING, K_METHODS, ReproConfig, init_sft_steps, parse_regime,
                                        variant_name, variants)


def aggregate(runs: list[dict], cfg: ReproConfig, inits: list[dict] | None = None) -> list[dict]:
    """One row per (regime, init, variant) in plan order: mean ± std over the seeds whose run succeeded."""
    rows = []
    for regime in cfg.regimes:
        for init in cfg.inits:
            cell_inits = [i for i in (inits or []) if i["regime"] == regime and i["init"] == init]
            if cell_inits:
                ok = [i for i in cell_inits if i.get("status") == "ok"]
                rows.append(_row(regime, init, "init", None, None, [i["measure"] for i in ok],
                                 sum(i.get("status") == "error" for i in cell_inits)))
            for method, k in variants(cfg):
                mine = [r for r in runs if (r["regime"], r["init"], r["variant"]) == (regime, init,
                                                                                      variant_name(method, k))]
                ok = [r for r in mine if r.get("status") == "ok"]
                rows.append(_row(regime, init, method, k, ok[0]["k"] if ok else None, ok,
                                 sum(r.get("status") == "error" for r in mine)))
    return rows


def _row(regime, init, method, k_label, k, ok: list[dict], failed: int) -> dict:
    curves = [r["correction_curve"] for r in ok if r.get("correction_curve")]
    mean_curve = []
    if curves:
        for i in range(min(len(c) for c in curves)):
            mean_curve.append([curves[0][i][0], statistics.fmean(c[i][1] for c in curves)])
    return {"regime": regime, "init": init, "method": method, "k_label": k_label, "k": k,
            "variant": method if k_label is None else variant_name(method, k_label), "n_ok": len(ok),
            "n_failed": failed,
            "test_accuracy": mean_std([r["test_accuracy"] for r in ok]),
            "test_graded": mean_std([r.get("test_graded") for r in ok]),   # None in results of older runs
            "draft_acceptance": mean_std([r["draft"]["acceptance_rate"] for r in ok]),
            "teacher_passes_per_token": mean_std([r["draft"]["teacher_forwards_per_token"] for r in ok]),
            "correction_rate_start": mean_std([r["correction_rate_start"] for r in ok if "correction_rate_start" in r]),
            "correction_rate_end": mean_std([r["correction_rate_end"] for r in ok if "correction_rate_end" in r]),
            "correction_curve_mean": mean_curve}


def _claim_ks(cfg: ReproConfig) -> list[str]:
    """The Ks the claims section compares: every swept K but V (which is on-policy KD itself)."""
    if "skd" not in cfg.methods:
        return []
    return [k for k in cfg.ks if k != "V"] or list(cfg.ks)


def render_markdown(result: dict) -> str:
    """reproduce.md: the settings, the mean ± std table, the claims, the failed runs."""
    cfg = ReproConfig(**{**result["config"], **{f: tuple(result["config"][f]) for f in
                                                 ("methods", "regimes", "inits", "ks", "seeds")}})
    env, teacher = result["env"], result["teacher"]
    lines = ["# SKD reproduction study (tiny scale)", "",
             f"Task `{cfg.task}`, teacher `{teacher['path']}` ({teacher['source']}), student `tiny-student`, "
             f"V = {result['vocab_size']}. Device {env['device_name']} ({env['device']}), torch {env['torch']}, "
             f"transformers {env['transformers']}, skd {env['skd']}, ops {env['ops_backend']}, {env['time']}.", "",
             f"Teacher test accuracy: **{teacher['eval']['test_accuracy']:.3f}** on "
             f"{teacher['eval']['test_examples']} held-out problems (greedy, exact match)"
             + (f"; graded {teacher['eval']['test_graded']:.3f}" if teacher["eval"].get("test_graded") is not None
                else "") + ".", "",
             f"Settings: regimes {', '.join(f'{r} ({parse_regime(r)} prompts)' for r in cfg.regimes)}; "
             f"inits {', '.join(f'{i} = {init_sft_steps(cfg, i)}' for i in cfg.inits)} SFT steps (lr {cfg.init_lr}) on "
             f"{f'the {cfg.init_regime} prompt set in every cell' if cfg.init_regime else 'the cell’s own prompt set'}; "
             f"{cfg.distill_steps} distillation steps, batch {cfg.batch_size}, lr {cfg.lr}, linear decay; "
             f"SKD gamma {cfg.gamma}, K in {{{', '.join(cfg.ks)}}} (V = whole vocabulary = on-policy KD); "
             f"seeds {', '.join(map(str, cfg.seeds))}"
             + ("" if cfg.init_seed is None else f" (every seed from the init of seed {cfg.init_seed})")
             + f"; {cfg.eval_examples} test problems; draft = greedy "
             f"speculative decoding, gamma {cfg.spec_gamma}, {cfg.spec_prompts} prompts. "
             f"Tiny models from scratch: lrs are not the paper's 1e-5 (deviation).", "",
             "Mean ± sample std over seeds (n = successful seeds; `init` = the starting checkpoint, untrained further). "
             "`corr.` = correction rate (teacher replacements / generated tokens), mean of the first and last 10% "
             "of steps (SKD, and AdaSwitch, where it is the share the teacher wrote after the switch; the other methods "
             "never replace tokens, their per-step zeros are in the JSON).", ""]
    rows = []
    for r in result["summary"]:
        k = "—" if r["k_label"] is None else (f"V={r['k']}" if r["k_label"] == "V" else r["k_label"])
        corr = "—" if r["method"] not in CORRECTING else \
            start_end_text(r["correction_rate_start"]["mean"], r["correction_rate_end"]["mean"])
        n = f"{r['n_ok']}" + (f" ({r['n_failed']} failed)" if r["n_failed"] else "")
        rows.append([r["regime"], r["init"], r["method"], k, n, fmt_pm(r["test_graded"]), fmt_pm(r["test_accuracy"]),
                     fmt_pm(r["draft_acceptance"]), fmt_pm(r["teacher_passes_per_token"]), corr])
    lines += markdown_table(["regime", "init", "method", "K", "n", "graded (test)", "test accuracy",
                             "draft acceptance", "teacher passes / token", "corr. start → end"], rows)
    lines += ["", *_claims(result["summary"], cfg, result["runs"])]
    failed = [r for r in result["runs"] if r.get("status") == "error"]
    not_run = [r for r in result["runs"] if r.get("status") == "not run"]
    if not_run:
        lines += ["", f"Not run yet (--report-only): {len(not_run)} of {len(result['runs'])} runs, e.g. "
                  + ", ".join(f"{r['regime']}/{r['init']}/seed{r['seed']}/{r['variant']}" for r in not_run[:6])
                  + (" …" if len(not_run) > 6 else "") + "."]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['regime']}/{r['init']}/seed{r['seed']}/{r['variant']}: {r.get('error', '?')}" for r in failed]
    t = result.get("timings_s")
    if t:
        lines += ["", f"Total wall time {t['total']:.0f} s (per-run wall times in reproduce.json)."]
    return "\n".join(lines) + "\n"


# What the claims section compares, lead first: (summary key, name in the text)
CLAIM_METRICS = (("test_graded", "graded"), ("test_accuracy", "test accuracy"), ("draft_acceptance", "draft acceptance"))


def _mean(row: dict | None, key: str) -> float | None:
    return None if row is None else row[key]["mean"]


def _run_value(run: dict, key: str) -> float | None:
    """One run's value of a CLAIM_METRICS key (draft acceptance lives in the run's draft record)."""
    if key == "draft_acceptance":
        return (run.get("draft") or {}).get("acceptance_rate")
    return run.get(key)


def paired_differences(runs: list[dict], regime: str, init: str, variant_a: str, variant_b: str,
                       key: str) -> list[float]:
    """a - b per seed, over the seeds where both runs succeeded (seed order): the two runs of a seed
    share its init, data order and sampling seed, so the spread of the inits cancels out."""
    def by_seed(variant: str) -> dict[int, float]:
        return {r["seed"]: v for r in runs if (r["regime"], r["init"], r["variant"]) == (regime, init, variant)
                and r.get("status") == "ok" and (v := _run_value(r, key)) is not None}
    a, b = by_seed(variant_a), by_seed(variant_b)
    return [a[s] - b[s] for s in sorted(a) if s in b]


def _paired_text(diffs: list[float]) -> str:
    """'paired +0.027 ± 0.005, ahead in 5 of 5' (empty below two seeds)."""
    if len(diffs) < 2:
        return ""
    ahead = sum(d > 0 for d in diffs)
    return f"; paired {statistics.fmean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}, ahead in {ahead} of {len(diffs)}"


def _claims(summary: list[dict], cfg: ReproConfig, runs: list[dict] | None = None) -> list[str]:
    """CONTRACT.md §7, read off the table: differences of means, and whether they exceed the
    sum of the two standard deviations ("separated"); beside it, the per-seed paired difference
    (mean ± std, and in how many seeds SKD is ahead). Nothing is claimed beyond that. One block per
    metric of CLAIM_METRICS that has values (graded first: older arith runs have none)."""
    cks = _claim_ks(cfg)
    if not cks:
        return []
    runs = runs or []
    out = ["## The paper's claims (CONTRACT.md §7), as measured here", "",
           "SKD at each K minus each baseline (separated = |difference| > std_a + std_b; needs n >= 2 on both "
           "sides); paired = the difference seed by seed, mean ± std over the seeds where both ran:"]
    by = {(r["regime"], r["init"], r["variant"]): r for r in summary}
    for key, label in CLAIM_METRICS:
        if not any(r[key]["mean"] is not None for r in summary):
            continue
        out += ["", f"**{label}**", ""]
        for regime in cfg.regimes:
            for init in cfg.inits:
                for ck in cks:
                    skd = by.get((regime, init, variant_name("skd", ck)))
                    if _mean(skd, key) is None:
                        continue
                    parts = []
                    for m in ("init", *cfg.methods):
                        other = by.get((regime, init, variant_name(m, ck) if m in K_METHODS else m))
                        if m == "skd" or _mean(other, key) is None:
                            continue
                        a, b = skd[key], other[key]
                        d = a["mean"] - b["mean"]
                        sep = "n/a" if a["std"] is None or b["std"] is None else \
                            ("separated" if abs(d) > a["std"] + b["std"] else "within noise")
                        paired = "" if m == "init" else _paired_text(paired_differences(
                            runs, regime, init, skd["variant"], other["variant"], key))
                        parts.append(f"{m} {d:+.3f} ({sep}{paired})")
                    corr = start_end_text(skd["correction_rate_start"]["mean"], skd["correction_rate_end"]["mean"],
                                          missing="")
                    trend = f"; correction rate {corr}" if corr and key == CLAIM_METRICS[0][0] else ""
                    out.append(f"- {regime} / {init} / K = {ck}: " + ", ".join(parts) + trend)
                ks = [_mean(by.get((regime, init, variant_name("skd", k))), key) for k in cfg.ks]
                ks = [x for x in ks if x is not None]
                if len(ks) > 1:
                    out.append(f"- {regime} / {init}: {label} over the K sweep {min(ks):.3f} – {max(ks):.3f}")
    return out


def write_outputs(result: dict, cfg: ReproConfig, *, final: bool) -> dict:
    """reproduce.json and reproduce.md after every run (a long study shows partial results); plots at the end."""
    from skd.core.checkpoint import atomic_write_text

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["summary"] = aggregate(result["runs"], cfg, result["inits"])
    plots = {}
    if final:
        plots = {"accuracy": _plot_accuracy(result, cfg, out / "accuracy.png"),
                 "correction_rate": _plot_correction(result, cfg, out / "correction_rate.png")}
        result["plots"] = plots
    write_json_atomic(out / "reproduce.json", result)
    atomic_write_text(out / "reproduce.md", render_markdown(result))
    return plots


def _grid(plt, cfg: ReproConfig, title: str):
    nr, nc = len(cfg.regimes), len(cfg.inits)
    fig, axes = plt.subplots(nr, nc, figsize=(5.5 * nc, 3.8 * nr), squeeze=False)
    fig.suptitle(title)
    return fig, axes


def _plot_accuracy(result: dict, cfg: ReproConfig, path: Path) -> str | None:
    """Bars per cell of the lead metric: the graded score where the task has one, else test accuracy."""
    graded = result["teacher"]["eval"].get("test_graded") is not None
    key, label = ("test_graded", "graded") if graded else ("test_accuracy", "test accuracy")
    teacher_value = result["teacher"]["eval"][key]

    def draw(plt):
        fig, axes = _grid(plt, cfg, f"Held-out {label} (mean ± std over seeds)")
        for i, regime in enumerate(cfg.regimes):
            for j, init in enumerate(cfg.inits):
                ax = axes[i][j]
                rows = [r for r in result["summary"] if r["regime"] == regime and r["init"] == init]
                names = [r["variant"] for r in rows]
                means = [r[key]["mean"] or 0.0 for r in rows]
                errs = [r[key]["std"] or 0.0 for r in rows]
                colors = ["tab:red" if r["method"] == "skd" else "tab:gray" if r["method"] == "init" else "tab:blue"
                          for r in rows]
                ax.bar(range(len(rows)), means, yerr=errs, capsize=3, color=colors)
                ax.axhline(teacher_value, color="black", ls="--", lw=0.8, label="teacher")
                ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
                top = max([teacher_value] + [m + e for m, e in zip(means, errs)])
                ax.set_ylim(0, max(0.05, min(1.0, 1.15 * top)))
                ax.set(title=f"regime {regime} · {init} init", ylabel=label)
                ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    return save_plot(path, draw)


def _plot_correction(result: dict, cfg: ReproConfig, path: Path) -> str | None:
    def draw(plt):
        fig, axes = _grid(plt, cfg, "Correction rate per step (mean over seeds): teacher replacements / generated tokens "
                                      "(0 for methods without replacements)")
        for i, regime in enumerate(cfg.regimes):
            for j, init in enumerate(cfg.inits):
                ax = axes[i][j]
                for r in result["summary"]:
                    if r["regime"] != regime or r["init"] != init or not r["correction_curve_mean"]:
                        continue
                    steps, rates = zip(*r["correction_curve_mean"])
                    ax.plot(steps, rates, label=r["variant"], lw=1.5 if r["method"] == "skd" else 1.0,
                            ls="-" if r["method"] == "skd" else ":")
                ax.set(title=f"regime {regime} · {init} init", xlabel="step", ylabel="correction rate",
                       ylim=(-0.02, 1.02))
                ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    return save_plot(path, draw)

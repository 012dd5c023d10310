"""Summarise a benchmarks/gpu/gpu_check.sh run: print the table and write summary.txt / summary.json.

Usage: python benchmarks/gpu/gpu_check_report.py OUTDIR. Reads what gpu_check.sh left in OUTDIR:
logs/stages.tsv, logs/env.log, logs/pytest.xml, kernels_40.json, kernels_320.json,
logs/distill_metrics.jsonl, speculative.json. Any of them may be missing (a failed stage): its
rows then say so. Exit code 1 when a result contradicts correctness (kernel and reference
disagree, greedy speculative outputs differ from the teacher's), else 0; stage failures are
gpu_check.sh's to report. Standard library only: it must run even when skd does not import.
"""
from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TARGET_FRACTION_OF_COPY = 0.60  # target: the top-K kernel at >= 60% of measured copy bandwidth
TARGET_TOPK_RATIO = 5.0  # `skd bench kernels`: torch.topk + membership >= 5x slower than the kernel


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _stages(logs: Path) -> list[dict]:
    rows = []
    try:
        for line in (logs / "stages.tsv").read_text().splitlines():
            name, status, secs, note = (line.split("\t") + ["", "", ""])[:4]
            rows.append({"stage": name, "status": status, "seconds": int(secs or 0), "note": note})
    except OSError:
        pass
    return rows


def _tests(logs: Path) -> dict | None:
    """Counts from pytest's JUnit XML, overall and for the CUDA-parametrised cases."""
    try:
        root = ET.parse(logs / "pytest.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "cuda_passed": 0, "cuda_failed": 0, "cuda_skipped": 0}
    failed_names = []
    for case in root.iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
            failed_names.append(name)
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        counts[outcome] += 1
        if "[cuda" in name or "-cuda" in name:
            counts[f"cuda_{outcome}"] += 1
    counts["failed_tests"] = failed_names[:20]
    return counts


def _env(logs: Path) -> list[str]:
    try:
        return [line.rstrip() for line in (logs / "env.log").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _kernel_rows(result: dict | None, rows: int) -> list[dict]:
    if result is None:
        return [{"rows": rows, "missing": True}]
    gpu = result.get("gpu_timing") or {}
    out = []
    for dtype, r in result["topk_rank_accept"].items():
        g = (gpu.get("topk_rank_accept") or {}).get(dtype, {})
        out.append({
            "rows": result["config"]["rows"], "vocab": result["config"]["vocab"], "k": result["config"]["k"],
            "dtype": dtype, "agree": r["agree"],
            "host_ms": r["median_ms"].get("kernel"), "topk_host_ms": r["median_ms"]["torch_topk"],
            "topk/kernel": r["ratios"]["topk/kernel"], "kernel/amax": r["ratios"]["kernel/amax"],
            "device_us": g.get("us", {}).get("kernel"), "reject_us": g.get("us", {}).get("kernel_reject"),
            "amax_us": g.get("us", {}).get("amax"), "GBps": g.get("GBps", {}).get("kernel"),
            "fraction_of_copy": g.get("fraction_of_copy", {}).get("kernel"),
            "amax_fraction_of_copy": g.get("fraction_of_copy", {}).get("amax"),
            "fits_in_l2": g.get("fits_in_l2"),
        })
    return out


def _distill(logs: Path) -> dict | None:
    try:
        recs = [json.loads(line) for line in (logs / "distill_metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    if not recs:
        return None
    later = [r["time_step"] for r in recs[1:]] or [recs[0]["time_step"]]  # step 1 pays warm-up
    return {"steps": len(recs), "first_step_s": recs[0]["time_step"], "median_step_s": statistics.median(later),
            "sampling_s": statistics.median(r["time_sampling"] for r in recs),
            "loss": recs[-1]["loss"], "acceptance_rate": recs[-1].get("acceptance_rate"),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs)}


def _speculative(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {"teacher_tokens_per_s": result["teacher_alone"]["tokens_per_s"],
            "device": result["env"].get("device_name"),
            "by_gamma": [{"gamma": r["gamma"], "speedup": r["speedup"], "acceptance_rate": r.get("acceptance_rate"),
                          "tokens_per_s": r["tokens_per_s"], "outputs_match_teacher": r["outputs_match_teacher"]}
                         for r in result["results"]]}


def _f(v, fmt: str, missing: str = "-") -> str:
    return missing if v is None else format(v, fmt)


def main(outdir: str) -> int:
    out = Path(outdir)
    logs = out / "logs"
    k40, k320 = _load_json(out / "kernels_40.json"), _load_json(out / "kernels_320.json")
    spec_json = _load_json(out / "speculative.json")
    copy = next(((k or {}).get("gpu_timing", {}).get("copy_bandwidth") for k in (k320, k40)
                 if k and k.get("gpu_timing")), None)
    summary = {
        "stages": _stages(logs), "env": _env(logs), "tests": _tests(logs),
        "backend": (k320 or k40 or {}).get("backend"), "device_name": (k320 or k40 or {}).get("device_name"),
        "copy_bandwidth": copy,
        "topk_rank_accept": _kernel_rows(k40, 40) + _kernel_rows(k320, 320),
        "distill": _distill(logs), "speculative": _speculative(spec_json),
    }
    problems = []
    for r in summary["topk_rank_accept"]:
        if r.get("agree") is False:
            problems.append(f"topk_rank_accept disagrees with the reference at {r['rows']} rows {r['dtype']}")
    for g in (summary["speculative"] or {}).get("by_gamma", []):
        if g["outputs_match_teacher"] is False:
            problems.append(f"greedy speculative outputs differ from the teacher's at gamma {g['gamma']}")
    summary["problems"] = problems

    L = []
    L.append(f"== skd GPU check · {summary['device_name'] or '?'} · ops backend {summary['backend'] or '?'}")
    L += [f"   {line}" for line in summary["env"][:8]]
    L.append("   stages: " + (", ".join(f"{s['stage']} {s['status']} {s['seconds']}s" for s in summary["stages"]) or "-"))
    t = summary["tests"]
    if t:
        L.append(f"   tests/test_ops.py: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped "
                 f"(CUDA cases: {t['cuda_passed']} passed, {t['cuda_failed']} failed, {t['cuda_skipped']} skipped)")
        for name in t["failed_tests"]:
            L.append(f"     FAILED {name}")
    else:
        L.append("   tests/test_ops.py: no result")
    if copy:
        L.append(f"   copy bandwidth: {copy['GBps']:.0f} GB/s (device-to-device copy of {copy['bytes'] / 2**30:.2f} GiB, "
                 f"bytes read + written; {copy['us']:.0f} µs)")
    else:
        L.append("   copy bandwidth: - (measured only on CUDA)")
    shape = next((f"V={r['vocab']:,}, K={r['k']}" for r in summary["topk_rank_accept"] if not r.get("missing")), "")
    L.append(f"   topk_rank_accept, {shape}, token = row argmax (full scan). dev µs: CUDA events, no launch gaps; "
             f"host ms: incl. launch + sync. targets: >= {TARGET_FRACTION_OF_COPY:.0%} of copy, "
             f"topk/kernel >= {TARGET_TOPK_RATIO:g}")
    L.append(f"   {'rows':>5} {'dtype':<9} {'dev µs':>8} {'GB/s':>7} {'%copy':>6} {'in L2':>5} {'reject µs':>9} "
             f"{'amax %copy':>10} {'host ms':>8} {'topk/kern':>9} {'agree':>5}")
    for r in summary["topk_rank_accept"]:
        if r.get("missing"):
            L.append(f"   {r['rows']:>5} (no result)")
            continue
        frac, amax_frac = r["fraction_of_copy"], r["amax_fraction_of_copy"]
        pct = "-" if frac is None else f"{100 * frac:.0f}%" + (" ✓" if frac >= TARGET_FRACTION_OF_COPY else " ✗")
        in_l2 = "-" if r["fits_in_l2"] is None else ("yes" if r["fits_in_l2"] else "no")
        L.append(f"   {r['rows']:>5} {r['dtype']:<9} {_f(r['device_us'], '.1f'):>8} {_f(r['GBps'], '.0f'):>7} "
                 f"{pct:>6} {in_l2:>5} {_f(r['reject_us'], '.1f'):>9} "
                 f"{'-' if amax_frac is None else f'{100 * amax_frac:.0f}%':>10} "
                 f"{_f(r['host_ms'], '.3f'):>8} {_f(r['topk/kernel'], '.1f'):>9} {('yes' if r['agree'] else 'NO'):>5}")
    d = summary["distill"]
    if d:
        L.append(f"   distill --method skd (tiny presets, arith, {d['steps']} steps): step {d['median_step_s']:.3f} s median "
                 f"after the first ({d['first_step_s']:.2f} s), sampling {d['sampling_s']:.3f} s, "
                 f"{d['tokens_per_s']:.0f} tok/s, acceptance {_f(d['acceptance_rate'], '.2f')}, loss {d['loss']:.3f}")
    else:
        L.append("   distill: no result")
    res_log = logs / "resume.log"
    res_line = next((x for x in reversed(res_log.read_text().splitlines()) if x.startswith("resume on")), None) \
        if res_log.exists() else None
    L.append(f"   {res_line}" if res_line else "   resume: no result")
    sp = summary["speculative"]
    if sp:
        parts = [f"γ={g['gamma']} {g['speedup']:.2f}x (accept {_f(g['acceptance_rate'], '.2f')}, "
                 f"{'=T' if g['outputs_match_teacher'] else 'outputs DIFFER'})" for g in sp["by_gamma"]]
        L.append(f"   speculative (tiny presets, greedy): teacher alone {sp['teacher_tokens_per_s']:.0f} tok/s; "
                 + "; ".join(parts))
    else:
        L.append("   speculative: no result")
    bad = [s["stage"] for s in summary["stages"] if s["status"] not in ("ok", "skipped")] + \
          [s["stage"] + " (deadline)" for s in summary["stages"] if s["note"] == "no time left"]
    for p in problems:
        L.append(f"   PROBLEM: {p}")
    L.append("== RESULT: " + ("PASS" if not bad and not problems else
                              "FAIL (" + ", ".join(bad + [f"{len(problems)} problem(s)"] * bool(problems)) + ")"))
    text = "\n".join(L) + "\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary) + "\n")
    print(text, end="")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTDIR (the output folder of benchmarks/gpu/gpu_check.sh)")
    sys.exit(main(sys.argv[1]))

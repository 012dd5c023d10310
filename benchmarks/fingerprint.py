"""Fingerprints of short fixed-seed training runs, to check that a refactor changes no behaviour.

Public: RUNS, fingerprint(skd, out_dir) -> dict, compare(a, b) -> list[str], main().
Every method (and a few divergence / semantics / accumulation variants) runs 3 steps on the tiny
presets through the `skd` command line; a run's fingerprint is the sha256 of its final weights and of
its metrics.jsonl without timing fields. Equal fingerprints before and after a change mean the
change kept training bit for bit (on one machine and torch build: compare like with like).

    python -m skd.benchmarks.fingerprint run OUT_DIR [--skd PATH_TO_SKD]    # writes OUT_DIR/fingerprint.json
    python -m skd.benchmarks.fingerprint compare A/fingerprint.json B/fingerprint.json
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

COMMON = ["--max-steps", "3", "--batch-size", "4", "--limit", "16", "--max-new-tokens", "24",
          "--eval-every", "2", "--save-every", "2", "--val-limit", "4", "--seed", "7"]
RUNS: dict[str, list[str]] = {
    **{m: ["distill", "--method", m] for m in ("skd", "supervised", "on-policy", "imitkd", "two-stage",
                                                "mixed-skd", "gkd", "seqkd")},
    "sft": ["sft", "--model", "tiny-student"],
    "skd-code-k3-rkl-mb2": ["distill", "--method", "skd", "--k", "3", "--semantics", "code",
                            "--divergence", "rkl", "--micro-batch-size", "2"],
    "on-policy-tvd-token": ["distill", "--method", "on-policy", "--divergence", "tvd", "--loss-norm", "token"],
    "supervised-skewfkl": ["distill", "--method", "supervised", "--divergence", "skew-fkl"],
}
TIMING_KEYS = ("time", "tokens_per_s", "_s", "elapsed", "wall")  # metrics that measure the clock, not training


def _weights_hash(folder: Path) -> str:
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].float().numpy().tobytes())
    return h.hexdigest()


def _metrics_hash(path: Path) -> str:
    rows = [{k: v for k, v in json.loads(line).items() if not any(t in k for t in TIMING_KEYS)}
            for line in path.read_text().splitlines()]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def fingerprint(skd: str, out_dir: Path) -> dict:
    """Run every RUNS entry with the `skd` executable into out_dir/<name>; their fingerprints."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, args in RUNS.items():
        run = out_dir / name
        shutil.rmtree(run, ignore_errors=True)
        p = subprocess.run([skd, *args, *COMMON, "--output-dir", str(run)], capture_output=True, text=True)
        if p.returncode:
            result[name] = {"error": p.stderr.strip().splitlines()[-1:]}
        else:
            result[name] = {"weights": _weights_hash(run / "final"), "metrics": _metrics_hash(run / "metrics.jsonl")}
        print(name, json.dumps(result[name]), flush=True)
    (out_dir / "fingerprint.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def compare(a: dict, b: dict) -> list[str]:
    """One line per run whose fingerprints differ (or that is missing on one side)."""
    return [f"{name}: {a.get(name)} != {b.get(name)}" for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]


def main() -> int:
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "run":
        skd = args[args.index("--skd") + 1] if "--skd" in args else shutil.which("skd") or "skd"
        res = fingerprint(skd, Path(args[1]))
        return 1 if any("error" in r for r in res.values()) else 0
    if len(args) == 3 and args[0] == "compare":
        diff = compare(*(json.loads(Path(p).read_text()) for p in args[1:]))
        print("\n".join(diff) if diff else "all runs equal")
        return 1 if diff else 0
    print(__doc__.split("\n\n")[-1])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

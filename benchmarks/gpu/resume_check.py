"""Exact resume on a device: an uninterrupted `skd distill --deterministic` against the same run
stopped after its step-2 checkpoint (its `final` removed) and continued with --resume.

Used by benchmarks/gpu/gpu_check.sh (stage `resume`) to check on a GPU what tests/test_resume.py checks
on the CPU. Prints one line; exit code 0 when every tensor of the two final checkpoints is equal
bit for bit, 1 otherwise.

Usage: python benchmarks/gpu/resume_check.py --device cuda --work DIR [--steps 4] [--batch 8] [--new-tokens 32]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args(argv)
    work = Path(a.work)
    straight, resumed = work / "straight", work / "resumed"
    args = ["distill", "--method", "skd", "--student", "tiny-student", "--teacher", "tiny-teacher", "--task", "arith",
            "--student-device", a.device, "--teacher-device", a.device, "--max-steps", str(a.steps),
            "--batch-size", str(a.batch), "--max-new-tokens", str(a.new_tokens), "--eval-every", "0",
            "--save-every", "2", "--deterministic"]
    run = lambda out, *extra: subprocess.run([sys.executable, "-m", "skd", *args, "--output-dir", str(out), *extra],
                                             check=True)
    run(straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")          # as if killed after the step-2 checkpoint
    run(resumed, "--resume")

    from safetensors.torch import load_file
    import torch

    want = load_file(str(straight / "final" / "model.safetensors"))
    got = load_file(str(resumed / "final" / "model.safetensors"))
    differ = sorted(k for k in want if k not in got or not torch.equal(want[k], got[k]))
    print(f"resume on {a.device} (--deterministic, {a.steps} steps, resumed from step 2): "
          + ("bit-identical" if not differ and set(got) == set(want) else f"DIFFERS in {len(differ)} tensors"))
    return 0 if not differ and set(got) == set(want) else 1


if __name__ == "__main__":
    sys.exit(main())

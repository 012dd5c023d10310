"""Time skd's rows_linear kernel against BLAS (F.linear) on the weight shapes of a decoding pass.

Public: run(shapes, rows, repeats, stream_mb, threads, seed) -> dict (JSON-able: versions,
threads, config, per shape and row count the median ms of each and their ratio); SMOLLM2_SHAPES.

A decoding pass multiplies a few rows by every weight of the model, and the weights come from
memory, not from cache (SmolLM2-135M's 538 MB do not fit any cache level). So each timed sample
cycles through copies of the weight adding up to at least `stream_mb` megabytes and reports the
time per call. BLAS and the kernel are interleaved per repeat, in alternating order, so that
background load and the VM's drift hit both alike. The kernel's output is also checked against
BLAS's (max abs difference relative to the largest output) on the first copy of each case.
"""
from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from skd.core import ops
from skd.core.environment import device_name

# SmolLM2-135M's linear layers as (out features N, in features K): the output layer, gate/up,
# down, q/o, k/v.
SMOLLM2_SHAPES = ((49_152, 576), (1_536, 576), (576, 1_536), (576, 576), (192, 576))


def _time_calls(fn, x: torch.Tensor, weights: list[torch.Tensor]) -> float:
    """ms per call over one pass through every weight copy."""
    start = time.perf_counter()
    for w in weights:
        fn(x, w)
    return (time.perf_counter() - start) * 1e3 / len(weights)


def run(shapes: tuple[tuple[int, int], ...] = SMOLLM2_SHAPES, rows: tuple[int, ...] = (1, 4, 16, 32, 64),
        repeats: int = 5, stream_mb: int = 256, threads: int | None = None, seed: int = 0) -> dict:
    """Median ms per call of F.linear and ops.rows_linear for every (shape, row count); see the module."""
    if repeats < 1 or stream_mb < 1 or not shapes or not rows:
        raise ValueError(f"repeats and stream_mb must be >= 1 and shapes, rows non-empty; got repeats={repeats}, "
                         f"stream_mb={stream_mb}, shapes={shapes}, rows={rows}")
    bad = [s for s in shapes if len(s) != 2 or min(s) < 1] + [m for m in rows if m < 1]
    if bad:
        raise ValueError(f"shapes need N, K >= 1 and rows >= 1; got {bad}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    cases = []
    try:
        g = torch.Generator().manual_seed(seed)
        for n, k in shapes:
            copies = max(2, (stream_mb << 20) // (n * k * 4))
            weights = [torch.randn(n, k, generator=g) for _ in range(copies)]
            for m in rows:
                x = torch.randn(m, k, generator=g)
                ref, out = F.linear(x, weights[0]), ops.rows_linear(x, weights[0])
                rel_diff = float((out - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
                _time_calls(F.linear, x, weights[:1])  # warm-up: first calls allocate
                _time_calls(ops.rows_linear, x, weights[:1])
                fns = {"blas": F.linear, "rows_linear": ops.rows_linear}
                times = {name: [] for name in fns}
                for r in range(repeats):
                    for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                        times[name].append(_time_calls(fns[name], x, weights))
                med = {name: statistics.median(t) for name, t in times.items()}
                cases.append({"N": n, "K": k, "rows": m, "copies": copies, "median_ms": med,
                              "blas_over_rows_linear": med["blas"] / med["rows_linear"],
                              "max_rel_diff": rel_diff})
            del weights
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "benchmark": "rows_linear",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "device_name": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "backend": ops.backend(),
        "vectorised": ops.rows_linear_vectorised(),
        "threads": used_threads,
        "config": {"shapes": [list(s) for s in shapes], "rows": list(rows), "repeats": repeats,
                   "stream_mb": stream_mb, "seed": seed,
                   "measures": "ms per call, weights streamed from memory (each sample cycles through "
                               "copies adding up to >= stream_mb MB); BLAS = F.linear; interleaved medians"},
        "cases": cases,
    }

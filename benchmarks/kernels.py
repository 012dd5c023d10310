"""Time the skd kernels against their pure-torch references and torch baselines.

Public: run(rows, vocab, dtypes, repeats, device, k, seed) -> dict (JSON-able: device, versions,
threads, config, medians in ms, ratios). Shape letters: N rows, V vocab, K top-k, B batch,
D draft length. The top-K test is timed on ONE logits tensor [N, V] per dtype against
torch.topk + membership and against `amax` (one read of the tensor: the memory floor), with
every variant interleaved per repeat so background load hits them alike. On CUDA the result
also holds "gpu_timing": device time per call from CUDA events (no launch gaps) and the
device's measured copy bandwidth, so the kernel can be stated as a fraction of it.
"""
from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from typing import Callable

import torch

from skd.core import ops
from skd.core.environment import device_name

TOKENS_NOTE = (
    "tokens = row argmax: always accepted, so the scan never exits early (worst case for the "
    "kernel); 'kernel_reject' uses the row argmin, rejected after the first block (typical case)"
)
SMALL_B, SMALL_D, SMALL_V = 64, 5, 1024  # one SKD round at batch 64, gamma 5 (CONTRACT.md §2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    inner: int = 1,
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median wall time in ms per call of each fn; each repeat runs every fn in turn.

    A sample times `inner` back-to-back calls (for microsecond ops, where one call is near the
    timer's resolution); `setups[name]`, when given, runs untimed before each sample.
    """
    setups = setups or {}
    for _ in range(warmup):
        for name, fn in fns.items():
            if name in setups:
                setups[name]()
            for _ in range(inner):
                fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in setups:
                setups[name]()
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3 / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def _time_topk(logits: torch.Tensor, k: int, repeats: int, warmup: int) -> dict:
    """Medians and ratios of the top-K test variants on one logits tensor [N, V]."""
    tokens = logits.argmax(-1)  # worst case: always accepted, so no early exit
    reject = logits.argmin(-1)  # typical reject: k larger values are found in the first block
    native = ops.backend() != "reference"
    fns: dict[str, Callable[[], object]] = {}
    if native:
        fns["kernel"] = lambda: torch.ops.skd.topk_rank_accept(logits, tokens, k)
        fns["kernel_reject"] = lambda: torch.ops.skd.topk_rank_accept(logits, reject, k)
    fns["reference"] = lambda: ops.reference.topk_rank_accept(logits, tokens, k)
    k_topk = min(k, logits.shape[-1])  # torch.topk refuses k > V; membership is the same then
    fns["torch_topk"] = lambda: (torch.topk(logits, k_topk, dim=-1).indices == tokens[:, None]).any(-1)
    fns["amax"] = lambda: logits.amax(-1)

    # Same answers before timing anything: all True (argmax) and all False (argmin, k < V).
    want = fns["torch_topk"]()
    agree = bool(torch.equal(ops.reference.topk_rank_accept(logits, tokens, k), want))
    if native:
        agree &= bool(torch.equal(fns["kernel"](), want))
        agree &= bool(torch.equal(fns["kernel_reject"](), ops.reference.topk_rank_accept(logits, reject, k)))
    ms = _interleaved_medians(fns, repeats, warmup, logits.device)
    kernel = ms.get("kernel")
    ratios = {
        "kernel/amax": kernel / ms["amax"] if kernel else None,
        "topk/kernel": ms["torch_topk"] / kernel if kernel else None,
        "reference/kernel": ms["reference"] / kernel if kernel else None,
    }
    return {"median_ms": ms, "ratios": ratios, "agree": agree}


# ---- CUDA only: device time and bandwidth ---------------------------------------------------

COPY_BYTES = 1 << 30  # 1 GiB copied: ~20x an H100's 50 MB L2, so the copy runs from and to DRAM
SLEEP_CYCLES = 2_000_000  # ~1 ms at ~2 GHz: longer than the host needs to queue the timed calls


def _gpu_us_per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median device time per call in µs: `calls` back-to-back calls between two CUDA events.

    The stream is held by a sleep kernel while the host queues the calls, so launch overhead and
    host gaps stay out of the number (the host-timed medians above include them).
    """
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()  # the one host sync per sample
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(samples)


def _copy_bandwidth(device: torch.device, repeats: int) -> dict:
    """Device-to-device copy of COPY_BYTES (random bytes): GB/s counting bytes read + written."""
    free, _ = torch.cuda.mem_get_info(device)
    n = min(COPY_BYTES, free // 4)  # source and destination, with room to spare
    src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = _gpu_us_per_call(lambda: dst.copy_(src), calls=5, repeats=repeats)
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": n, "us": us, "GBps": 2 * n / (us * 1e-6) / 1e9}


def _gpu_timing_topk(logits: torch.Tensor, k: int, repeats: int, copy_gbps: float) -> dict:
    """Device µs per call of the kernel (accept and reject case) and amax, and the bandwidth the
    accept case reaches: it reads every logit once, so bytes / time against the copy's GB/s."""
    tokens = logits.argmax(-1)
    reject = logits.argmin(-1)
    calls = 20  # per sample: several calls in flight, each a few to a few hundred µs
    fns = {"amax": lambda: logits.amax(-1)}
    if ops.backend() == "cuda":
        fns["kernel"] = lambda: torch.ops.skd.topk_rank_accept(logits, tokens, k)
        fns["kernel_reject"] = lambda: torch.ops.skd.topk_rank_accept(logits, reject, k)
    us = {name: _gpu_us_per_call(fn, calls, repeats) for name, fn in fns.items()}
    n_bytes = logits.numel() * logits.element_size()
    gbps = {name: n_bytes / (us[name] * 1e-6) / 1e9 for name in ("kernel", "amax") if name in us}
    l2 = getattr(torch.cuda.get_device_properties(logits.device), "L2_cache_size", None)
    return {
        "us": us,
        "logits_bytes": n_bytes,
        # Repeated calls on one tensor: when it fits in L2 the reads are served from the cache.
        "fits_in_l2": None if l2 is None else n_bytes <= l2,
        "GBps": gbps,
        "fraction_of_copy": {name: v / copy_gbps for name, v in gbps.items()},
    }


def _time_small_ops(device: torch.device, repeats: int, warmup: int, seed: int) -> dict:
    """accept_prefix / splice / speculative_accept at B=64, D=5: per-call latency in ms."""
    g = torch.Generator().manual_seed(seed)
    B, D, V = SMALL_B, SMALL_D, SMALL_V
    accepted = (torch.rand(B, D, generator=g) < 0.8).to(device)
    draft_len = torch.full((B,), D, dtype=torch.int64).to(device)
    p = torch.softmax(torch.randn(B, D + 1, V, generator=g), -1).to(device)
    q = torch.softmax(torch.randn(B, D, V, generator=g), -1).to(device)
    draft = torch.randint(0, V, (B, D), generator=g).to(device)
    u = torch.rand(B, D, generator=g).to(device)
    n_accept = torch.randint(0, D + 1, (B,), generator=g).to(device)
    replacement = torch.randint(0, V, (B,), generator=g).to(device)
    inner = 20  # calls per timed sample: one call is a few microseconds
    L = inner * (D + 1) + 1  # room for every call of a sample, so no row ever finishes

    fns: dict[str, Callable[[], object]] = {}
    setups: dict[str, Callable[[], object]] = {}
    impls = {"reference": ops.reference}
    if ops.backend() != "reference":
        impls = {"kernel": torch.ops.skd, **impls}
    for impl_name, impl in impls.items():
        fns[f"accept_prefix/{impl_name}"] = lambda impl=impl: impl.accept_prefix(accepted, draft_len)
        fns[f"speculative_accept/{impl_name}"] = lambda impl=impl: impl.speculative_accept(p, q, draft, u)
        # One state per implementation (splice mutates it), rewound before each sample.
        seq = torch.zeros(B, L, dtype=torch.int64, device=device)
        length = torch.zeros(B, dtype=torch.int64, device=device)
        prov = torch.zeros(B, L, dtype=torch.int8, device=device)
        fin = torch.zeros(B, dtype=torch.bool, device=device)
        fns[f"splice/{impl_name}"] = (
            lambda impl=impl, seq=seq, length=length, prov=prov, fin=fin:
            impl.splice(seq, length, draft, n_accept, replacement, prov, fin, -1)
        )
        setups[f"splice/{impl_name}"] = lambda length=length, fin=fin: (length.zero_(), fin.zero_())
    ms = _interleaved_medians(fns, repeats, warmup, device, inner=inner, setups=setups)
    out: dict[str, dict[str, float]] = {}
    for key, value in ms.items():
        op, impl_name = key.split("/")
        out.setdefault(op, {})[impl_name] = value
    return {"config": {"B": B, "D": D, "V": V, "calls_per_sample": inner}, "median_ms": out}


def run(
    rows: int = 40,
    vocab: int = 256_000,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    repeats: int = 20,
    device: str = "cpu",
    k: int = 25,
    seed: int = 0,
    warmup: int = 3,
    threads: int | None = None,
) -> dict:
    """Time the top-K test per dtype on [rows, vocab] logits, and the small ops; return a dict.

    Defaults: Gemma's vocabulary (V = 256,000, CONTRACT.md §3), 40 verified positions (B=8
    prompts x (gamma 5 drafts)), the paper's K = 25. `threads` sets torch's intra-op threads
    for the run (restored afterwards); None keeps the current setting.
    """
    if rows < 1 or vocab < 1 or repeats < 1 or k < 0 or warmup < 0:
        raise ValueError(
            f"rows, vocab and repeats must be >= 1 and k, warmup >= 0; got rows={rows}, "
            f"vocab={vocab}, repeats={repeats}, k={k}, warmup={warmup}"
        )
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(rows, vocab, generator=g)  # one draw; each dtype is a rounding of it
        per_dtype = {}
        for name in dtypes:
            logits = base.to(DTYPES[name]).to(dev)
            per_dtype[name] = _time_topk(logits, k, repeats, warmup)
            del logits
        small_ops = _time_small_ops(dev, repeats, warmup, seed)
        gpu_timing = None
        if dev.type == "cuda":
            copy = _copy_bandwidth(dev, repeats)
            gpu_timing = {
                "method": f"CUDA events around back-to-back calls queued behind a sleep kernel; median "
                          f"of {repeats} samples",
                "l2_bytes": getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None),
                "copy_bandwidth": copy,
                "topk_rank_accept": {},
            }
            for name in dtypes:
                logits = base.to(DTYPES[name]).to(dev)
                gpu_timing["topk_rank_accept"][name] = _gpu_timing_topk(logits, k, repeats, copy["GBps"])
                del logits
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    extra = {} if gpu_timing is None else {"gpu_timing": gpu_timing}
    return {
        "benchmark": "kernels",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "backend": ops.backend(),
        "threads": used_threads,
        "config": {
            "rows": rows,
            "vocab": vocab,
            "k": k,
            "dtypes": list(dtypes),
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "tokens": TOKENS_NOTE,
        },
        "topk_rank_accept": per_dtype,
        "small_ops": small_ops,
        **extra,
    }

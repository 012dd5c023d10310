"""Distillation step cost per method, the chunked divergence's memory against an unchunked one, and
what sparse (top-N + tail) teacher targets save and cost in accuracy.

Public: run(teacher, student, *, methods, task, batch_size, max_new_tokens, steps, device, dtype,
seed) -> dict; divergence_memory(n_positions, vocab, device, dtype) -> dict;
sparse_teacher_memory(n_positions, vocab, topks, device, dtype, seed) -> dict; lm_like_logits(...);
checkpointing_memory(model, *, batch_size, positions, repeats, device, dtype, seed) -> dict
(--gradient-checkpointing); PeakMemory.

Step time is split as in training: sampling (building the batch's sequences), teacher (the teacher
logits: a forward pass, or nothing when SKD reuses its verification logits), loss+backward, and
optimizer step; tokens/s counts response tokens trained on. Peak memory: CUDA's allocator peak, or
on CPU the peak resident set size above the level before the step (sampled every millisecond):
the allocator keeps freed memory, so on CPU a method run after another one that needed as much shows
~0 (RSS growth, not the step's own peak).
"""
from __future__ import annotations

import statistics
import threading
import time

import torch

from skd.benchmarks.common import load_model_and_tokenizer
from skd.core.environment import env_info

METHODS = ("supervised", "on-policy", "skd", "imitkd", "gkd", "sft")   # also: speckd, adaswitch, two-stage, ...


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Peak memory above the starting level while the block runs (CUDA allocator or CPU RSS)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = _rss_bytes()
            self._max = self.start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self._max = max(self._max, _rss_bytes())
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self.start
        return False


def run(teacher: str, student: str, *, methods=METHODS, task: str = "arith", batch_size: int = 8,
        max_new_tokens: int = 64, steps: int = 3, k: int = 25, gamma: int = 5, device: str = "cpu",
        dtype: str = "float32", seed: int = 20) -> dict:
    from skd.core import losses
    from skd.core.config import SampleConfig
    from skd.core.tasks import get_task
    from skd.core.batches import build_training_batch, teacher_logits_flat
    from skd.core.gating import speckd_gate
    from skd.core.timing import clock
    from skd.core.data import tokenize_examples
    from skd.core.objective import accumulate_gradients

    dev = torch.device(device)
    t_model, tok = load_model_and_tokenizer(teacher, device, dtype)
    task_obj = get_task(task)
    examples = tokenize_examples(task_obj.load("train", limit=batch_size * (steps + 1), seed=seed), tok,
                                 task_obj.render_prompt)
    scfg = SampleConfig(k=k, gamma=gamma, max_new_tokens=max_new_tokens, stop_strings=tuple(task_obj.stop_strings))
    V = len(tok)
    rows = []
    for method in methods:
        s_model, _ = load_model_and_tokenizer(student, device, dtype)
        s_model.requires_grad_(True)
        opt = torch.optim.AdamW(s_model.parameters(), lr=1e-5)
        div = None if method in ("sft", "seqkd") else losses.get_divergence("fkl")
        gens = {"student": torch.Generator(device=dev).manual_seed(seed + 1),
                "teacher": torch.Generator(device=dev).manual_seed(seed + 2),
                "method": torch.Generator().manual_seed(seed + 3)}
        times = {"sampling": [], "teacher": [], "loss_backward": [], "optimizer": [], "step": []}
        tokens, peaks = [], []
        for step in range(steps + 1):  # step 0 is warm-up
            batch = examples[step * batch_size: (step + 1) * batch_size]
            with PeakMemory(dev) as mem:
                t0 = clock(dev)
                s = build_training_batch(method, batch, step=step, total_steps=steps + 1, teacher=t_model,
                                         student=s_model, scfg=scfg, gens=gens, tokenizer=tok, pad_id=tok.pad_token_id,
                                         vocab_size=V, gkd_lambda=0.5)
                t1 = clock(dev)
                tf = teacher_logits_flat(t_model, s, V) if div is not None else None
                if method == "speckd":   # SpecKD's loss gate, as the training loop applies it
                    s = speckd_gate(s, tf, k=k, verification=scfg.speckd_verification, rejected_weight=0.0)
                t2 = clock(dev)
                opt.zero_grad(set_to_none=True)
                s_model.train()
                accumulate_gradients(s_model, s, tf, divergence=div, micro_batch_size=batch_size,
                                     loss_norm="sequence", vocab_size=V)
                t3 = clock(dev)
                opt.step()
                t4 = clock(dev)
            if step == 0:
                continue
            for key, v in (("sampling", t1 - t0), ("teacher", t2 - t1), ("loss_backward", t3 - t2),
                           ("optimizer", t4 - t3), ("step", t4 - t0)):
                times[key].append(v)
            tokens.append(int(s.response_lengths.sum()))
            peaks.append(mem.peak)
        med = {f"{k}_s": statistics.median(v) for k, v in times.items()}
        rows.append({"method": method, **med, "tokens_per_step": statistics.mean(tokens),
                     "tokens_per_s": statistics.mean(tokens) / med["step_s"], "peak_memory_bytes": max(peaks)})
        del s_model, opt
    by = {r["method"]: r for r in rows}
    ratios = {}
    if "skd" in by and "on-policy" in by:
        ratios["skd_step_over_on_policy_step"] = by["skd"]["step_s"] / by["on-policy"]["step_s"]
        ratios["skd_per_token_over_on_policy_per_token"] = (
            by["on-policy"]["tokens_per_s"] / by["skd"]["tokens_per_s"])
    return {"bench": "distill", "env": env_info(dev),
            "config": {"teacher": teacher, "student": student, "task": task, "batch_size": batch_size,
                       "max_new_tokens": max_new_tokens, "steps": steps, "k": k, "gamma": gamma, "dtype": dtype,
                       "seed": seed},
            "results": rows, "ratios": ratios}


def divergence_memory(n_positions: int = 64, vocab: int = 256_000, device: str = "cpu",
                      dtype: str = "float32") -> dict:
    """Peak extra memory of FKL loss+backward: skd's chunked Function against plain autograd."""
    from skd.core import losses

    dev = torch.device(device)
    dt = getattr(torch, dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    teacher = torch.randn(n_positions, vocab, generator=g, device=dev).to(dt)
    mask = torch.ones(n_positions, dtype=torch.bool, device=dev)
    logits_bytes = teacher.numel() * teacher.element_size()

    def chunked(student):
        s, c = losses.fkl(student, teacher, mask)
        (s / c).backward()

    def unchunked(student):
        lq = torch.log_softmax(student.float(), -1)
        lp = torch.log_softmax(teacher.float(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        kl.mean().backward()

    out = {}
    for name, fn in (("chunked", chunked), ("unchunked", unchunked)):
        peaks = []
        for _ in range(3):
            student = torch.randn(n_positions, vocab, generator=g, device=dev).to(dt).requires_grad_(True)
            with PeakMemory(dev) as mem:
                fn(student)
            peaks.append(mem.peak)
            del student
        out[name] = {"peak_extra_bytes": min(peaks)}
    for name in out:
        out[name]["over_student_logits"] = out[name]["peak_extra_bytes"] / logits_bytes
        out[name]["over_both_logits"] = out[name]["peak_extra_bytes"] / (2 * logits_bytes)
    return {"bench": "divergence_memory", "env": env_info(dev),
            "config": {"n_positions": n_positions, "vocab": vocab, "dtype": dtype, "logits_bytes": logits_bytes},
            "results": out,
            "note": "peak memory above the level before loss+backward; the inputs (student and teacher logits) "
                    "already exist and are not counted; the gradient of the student logits is (it is output)"}


# Language-model-like logits: a Zipf-like base -ZIPF_S * ln(rank) (ranks a random permutation per
# position) plus N(0, NOISE^2) noise. Real next-token distributions are peaked with a long tail;
# i.i.d. N(0, 1) logits would spread the mass evenly over 256,000 tokens and make every N useless.
ZIPF_S = 1.5
NOISE = 1.0


def lm_like_logits(n_positions: int, vocab: int, *, generator: torch.Generator, device="cpu",
                   base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [P, V] fp32, base [P, V]): base = -ZIPF_S * ln(rank), logits = base + NOISE * N(0, 1).

    Pass `base` to draw another noisy copy of the same base (a student that resembles the teacher)."""
    if base is None:
        ranks = torch.argsort(torch.rand(n_positions, vocab, generator=generator, device=device), dim=-1)
        base = -ZIPF_S * (ranks.float() + 1.0).log()
    return base + NOISE * torch.randn(base.shape, generator=generator, device=device), base


def sparse_teacher_memory(n_positions: int = 32, vocab: int = 256_000, topks=(16, 64, 256), device: str = "cpu",
                          dtype: str = "float32", seed: int = 0) -> dict:
    """Bytes of the stored teacher targets, dense [P, V] vs SparseTeacher (values + indices + tail),
    and the FKL loss error of the sparse loss against the dense one, per N."""
    from skd.core import losses
    from skd.core.sparse_teacher import SparseTeacher

    dev = torch.device(device)
    dt = getattr(torch, dtype)
    g = torch.Generator(device=dev).manual_seed(seed)
    teacher, base = lm_like_logits(n_positions, vocab, generator=g, device=dev)
    student, _ = lm_like_logits(n_positions, vocab, generator=g, device=dev, base=base)
    teacher, student = teacher.to(dt), student.to(dt)
    weights = torch.ones(n_positions, device=dev)
    fkl = losses.get_divergence("fkl")

    def loss_and_grad(target):
        z = student.detach().clone().requires_grad_(True)
        total, count = fkl(z, target, weights)
        (total / count).backward()
        return float((total / count).detach()), z.grad.float()

    dense_value, dense_grad = loss_and_grad(teacher)
    dense_norm = float(dense_grad.norm())
    lp = torch.log_softmax(teacher.float(), -1)
    rows = []
    for n in topks:
        sparse = SparseTeacher.from_logits(teacher, n)
        value, grad = loss_and_grad(sparse)
        dense_bytes = teacher.numel() * teacher.element_size()
        rows.append({"n": min(n, vocab), "dense_bytes": dense_bytes, "sparse_bytes": sparse.nbytes,
                     "dense_over_sparse": dense_bytes / sparse.nbytes,
                     "teacher_tail_mass": float(sparse.tail_logprob.exp().mean()),
                     "fkl_dense": dense_value, "fkl_sparse": value,
                     "fkl_rel_error": abs(value - dense_value) / dense_value,
                     "grad_norm_rel_error": abs(float(grad.norm()) - dense_norm) / dense_norm,
                     "grad_rel_error": float((grad - dense_grad).norm()) / dense_norm})
    entropy = float(-(lp.exp() * lp).sum(-1).mean())
    return {"bench": "sparse_teacher", "env": env_info(dev),
            "config": {"n_positions": n_positions, "vocab": vocab, "dtype": dtype, "seed": seed,
                       "teacher_logits": f"-{ZIPF_S} * ln(rank) + {NOISE} * N(0, 1), ranks shuffled per position; "
                                         f"student: the same base plus independent noise",
                       "teacher_entropy_nats": entropy,
                       "teacher_top1_prob": float(lp.max(-1).values.exp().mean())},
            "results": rows,
            "note": "bytes of the stored targets as measured from the tensors (sparse: fp32 log-probs, int32 ids "
                    "and the fp32 tail); errors of the mean FKL (loss) and of its gradient with respect to the "
                    "student logits, sparse against dense"}
def _fixed_mmap_threshold(nbytes: int) -> bool:
    """glibc on Linux: allocations of `nbytes` or more get their own mapping, returned to the system when
    freed. glibc otherwise raises its threshold after the first large free and keeps later tensors in
    its heap, so the resident set stops following live memory and a second measurement reads ~0. Stays
    set for the rest of the process (a benchmark process). False where there is no such malloc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


def checkpointing_memory(model: str = "tiny-teacher", *, batch_size: int = 8, positions: int = 256, repeats: int = 3,
                         device: str = "cpu", dtype: str = "float32", seed: int = 20) -> dict:
    """Peak memory and time of one training step's student forward + backward (where the activations
    live), without and with --gradient-checkpointing, on the same batch, alternating `repeats` times.

    The batch: `batch_size` rows of `positions` seeded random tokens (16 prompt + the rest a response),
    cross-entropy loss through skd.core.objective.accumulate_gradients, the loop's own code path; the
    gradients (parameter-sized, the same both ways) are counted. Peak: CUDA's allocator peak, or on
    the CPU the peak resident set above the level before the step, with glibc's mmap threshold fixed
    at 64 KiB so that freed tensors leave the resident set; the smallest of the repeats is reported."""
    import gc

    from skd.core.batches import ground_truth_samples
    from skd.core.data import TokenizedExample
    from skd.core.gradient_checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing
    from skd.core.objective import accumulate_gradients

    dev = torch.device(device)
    mmap_fixed = dev.type == "cpu" and _fixed_mmap_threshold(64 * 1024)
    student, tok = load_model_and_tokenizer(model, device, dtype)
    student.requires_grad_(True)
    student.train()
    V = len(tok)
    prompt = min(16, positions - 1)
    g = torch.Generator().manual_seed(seed)
    rows = [TokenizedExample(torch.randint(0, V, (prompt,), generator=g).tolist(),
                             torch.randint(0, V, (positions - prompt,), generator=g).tolist()) for _ in range(batch_size)]
    s = ground_truth_samples(rows, tok.pad_token_id or 0, positions - prompt)
    param_bytes = sum(p.numel() * p.element_size() for p in student.parameters())
    out = {"off": {"peaks": [], "times": []}, "on": {"peaks": [], "times": []}}
    for rep in range(repeats + 1):   # the first round is warm-up
        for variant in ("off", "on"):
            (enable_gradient_checkpointing if variant == "on" else disable_gradient_checkpointing)(student)
            student.zero_grad(set_to_none=True)
            gc.collect()
            with PeakMemory(dev) as mem:
                t0 = time.perf_counter()
                accumulate_gradients(student, s, None, divergence=None, micro_batch_size=batch_size,
                                     loss_norm="sequence", vocab_size=V)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t1 = time.perf_counter()
            if rep > 0:
                out[variant]["peaks"].append(mem.peak)
                out[variant]["times"].append(t1 - t0)
    disable_gradient_checkpointing(student)
    results = {v: {"peak_bytes": min(r["peaks"]), "peak_bytes_all": r["peaks"],
                   "forward_backward_s": statistics.median(r["times"])} for v, r in out.items()}
    off, on = results["off"], results["on"]
    what = ("CUDA allocator peak" if dev.type == "cuda" else
            "peak resident set size above the level before the step" +
            (" (glibc mmap threshold fixed at 64 KiB)" if mmap_fixed else " (glibc's threshold not fixed: noisy)"))
    return {"bench": "gradient_checkpointing_memory", "env": env_info(dev),
            "config": {"model": model, "batch_size": batch_size, "positions": positions, "repeats": repeats,
                       "dtype": dtype, "seed": seed, "parameter_bytes": param_bytes},
            "results": results,
            "ratios": {"peak_on_over_off": on["peak_bytes"] / off["peak_bytes"] if off["peak_bytes"] else None,
                       "time_on_over_off": on["forward_backward_s"] / off["forward_backward_s"]},
            "note": f"one training step's student forward + backward (cross-entropy, {batch_size} x {positions} "
                    f"tokens, the same batch both ways, gradients included): {what}; smallest of {repeats}"
                    + ("; times include the page faults of the fixed threshold" if mmap_fixed else "")}

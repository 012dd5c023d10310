"""The CPU fast path for the linear layers of decoding passes: a few rows against each weight.

Public: DecodeLinears(model) with .active() (a context manager) and .routed (how many layers it
routes); kernel_rows(x); MAX_ROWS; MIN_WEIGHTS; enabled(); ENV_SWITCH.

A decoding pass (one new position, or a short draft, for each row of a batch) multiplies a few
rows by every weight of the model. BLAS GEMM packs the weight before multiplying, and with few
rows the packing costs more than the product: on 2 AVX2 cores SmolLM2-135M's output layer
(49,152 x 576) takes 20 ms for 4 rows in MKL and 7-8 ms in skd's rows_linear kernel, which
streams the weight once (cpp/rows_linear_cpu.cpp). Inside `active()`, every plain nn.Linear with
a float32 CPU weight of at least MIN_WEIGHTS entries sends inputs of at most MAX_ROWS rows, outside
autograd, to that kernel and everything else to F.linear as before. The sampler's KV-cache streams
(skd.core.kvcache) run their forwards inside it: on-policy, SKD and speculative sampling and skd
eval's generation.

Results differ from BLAS's only by float32 rounding (the order of the sums); each row's result
depends on that row alone, whatever the batch. Off where the kernel's vector path does not run
(no AVX2/FMA, no compiled extension), on other devices and dtypes, and with SKD_ROWS_LINEAR=0.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from skd.core import ops

__all__ = ["DecodeLinears", "MAX_ROWS", "MIN_WEIGHTS", "ENV_SWITCH", "enabled", "kernel_rows"]

# Up to 32 rows the kernel beat MKL on every SmolLM2-135M weight shape on 2 AVX2 cores, weights
# streamed from memory as in a decoding pass (576 x 576 up to 49,152 x 576: 1.1-2.4x at 32 rows);
# from 48 rows the 1536-wide down projection is at parity or slower and from 64 rows the smaller
# layers too, so wider inputs (prefills, training forwards, wide verifications) keep BLAS.
MAX_ROWS = 32
# Smaller weights sit in cache, where BLAS loses little to packing and wins at 16 rows (a 256 x 96
# layer: 13 us in MKL, 22 us here); the kernel's gain is in streaming weights from memory.
MIN_WEIGHTS = 1 << 16

ENV_SWITCH = "SKD_ROWS_LINEAR"


def enabled() -> bool:
    """True unless SKD_ROWS_LINEAR is 0/false/off, and the kernel's vector path runs on this CPU."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return ops.rows_linear_vectorised()


def kernel_rows(x: torch.Tensor) -> int:
    """The rows of x[..., K] when the rows kernel should take it (1 to MAX_ROWS rows, float32, on the
    CPU, outside autograd), else 0."""
    k = x.shape[-1] if x.dim() else 0
    rows = x.numel() // k if k else 0
    if (0 < rows <= MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled()):
        return rows
    return 0


def _routed_forward(module: torch.nn.Linear):
    """module's forward with inputs of few rows, outside autograd, sent to the rows kernel."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, module.bias
        rows = kernel_rows(x)
        if rows:
            y = ops.rows_linear(x.reshape(rows, x.shape[-1]), weight, bias)
            return y.view(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight, bias)

    return forward


class DecodeLinears:
    """The plain nn.Linear layers of `model` that the rows kernel may serve (none where off)."""

    def __init__(self, model: torch.nn.Module):
        self._forwards: dict[torch.nn.Module, object] = {}
        if not enabled():
            return
        for m in model.modules():
            # Subclasses (LoRA, quantized layers) keep their own forward; an instance that already
            # carries its own forward is left alone.
            if (type(m) is torch.nn.Linear and "forward" not in m.__dict__
                    and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
                    and m.weight.numel() >= MIN_WEIGHTS):
                self._forwards[m] = _routed_forward(m)

    @property
    def routed(self) -> int:
        return len(self._forwards)

    @contextmanager
    def active(self):
        """Route the layers for the duration of the block; always restored, even on error."""
        installed = []
        try:
            for m, fwd in self._forwards.items():
                if "forward" not in m.__dict__:
                    m.forward = fwd
                    installed.append(m)
            yield
        finally:
            for m in installed:
                m.__dict__.pop("forward", None)

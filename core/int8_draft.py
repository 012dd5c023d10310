"""Int8 weights for a draft model's linear layers: a distilled student cheap enough to draft at batch 1.

Public: Int8Linear, quantize_draft(model) -> int (the layers replaced).

Why: on a CPU, a decoding pass over one to a few rows is bound by reading the weights from memory,
so a draft pays at batch 1 only when it is both close to the target (high acceptance) and much
cheaper per pass. A float32 draft with two thirds of the target's layers costs two thirds of a
target pass; its int8 copy reads a quarter of the bytes per layer. Speculative decoding's output
does not depend on the draft's precision (greedy: the target's greedy output; sampled: the target's
distribution, by the acceptance rule): the draft only proposes, and rounding its weights can only
move its acceptance. Not for training or for a target: the layers are frozen and inference-only.

Quantization: symmetric, one float32 scale per output row, scale = max|w| / 127 and
q = round(w / scale) in [-127, 127] (a zero row keeps scale 1); each weight is then within
scale / 2 of the original. Inputs the rows kernel takes (skd.core.decode_linear.kernel_rows:
decoding passes, outside autograd) run it on the int8 weights (skd.core.ops.rows_linear_q8, where
its AVX2 path runs and SKD_ROWS_LINEAR is not 0); wider inputs (a prompt's prefill) and other
devices multiply by the dequantized weight (q * scale, made for that call), which gives the same
values up to float32 rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from skd.core import ops
from skd.core.decode_linear import enabled, kernel_rows

__all__ = ["Int8Linear", "quantize_draft"]


class Int8Linear(torch.nn.Module):
    """An inference-only linear layer holding int8 weights and one float32 scale per output row."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().to(torch.float32)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        # Buffers, not parameters: nothing trains them, and a model's first parameter keeps telling
        # callers its float dtype.
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self._kernel = enabled()   # the rows kernel's vector path runs here (and SKD_ROWS_LINEAR is not 0)

    def weight_buffer_bytes(self) -> int:
        """Bytes a forward reads for the weight (int8 values and scales), for skd.core.models.weight_bytes."""
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()

    def dequantized(self) -> torch.Tensor:
        """float32[N, K]: the weight these int8 values and scales stand for."""
        return self.qweight.to(torch.float32) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("Int8Linear is inference-only (a quantized draft): run it under torch.no_grad()")
        rows = kernel_rows(x) if self._kernel and self.qweight.device.type == "cpu" else 0
        if rows:
            y = ops.rows_linear_q8(x.reshape(rows, self.in_features), self.qweight, self.scale, self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        w = self.dequantized().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def quantize_draft(model: torch.nn.Module) -> int:
    """Replace every plain nn.Linear of `model` (in place) by an Int8Linear; returns how many.

    The model becomes an inference-only draft: call it under torch.no_grad(), do not train or save
    it. A tied output layer gets its own int8 copy; the input embedding keeps its float weights.
    """
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if type(child) is torch.nn.Linear]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child))
    model.requires_grad_(False)
    return len(targets)

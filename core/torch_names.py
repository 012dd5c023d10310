"""The dtype and device names users type, parsed into torch objects with one-line errors.

Public: `DTYPES`, `parse_dtype(dtype)` ("auto" | "float32" | "bf16" | ... | torch.dtype),
`parse_device(device)` ("cpu" | "cuda" | "cuda:N" | torch.device; CUDA must be usable),
`dtype_kwarg(dtype)` (from_pretrained's dtype keyword for the installed transformers),
`fast_compute_dtype(device)` (bfloat16 where bf16 autocast runs on native instructions, else float32),
`resolve_compute_dtype(dtype, device)` ("auto" -> fast_compute_dtype).
torch and transformers are imported inside the functions, so importing this module is instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import SkdError

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def parse_dtype(dtype: Any) -> Any:
    """A torch.dtype, or "auto", from a dtype or its name (fp32/bf16/fp16/half/fp64 accepted); else SkdError."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"  # what the checkpoint's config says (bf16 for Gemma, Qwen; fp32 presets)
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp64": "float64"}
    name = aliases.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise SkdError(f"unknown dtype '{dtype}'", f"use one of: {', '.join(DTYPES)}")
    return getattr(torch, name)


def parse_device(device: Any) -> "torch.device":
    """A torch.device from auto (CUDA when usable, else CPU), cpu, cuda or cuda:N; SkdError if unknown
    or CUDA is unusable."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SkdError(f"unknown device '{device}'", "use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SkdError(f"device '{device}' requested but this torch has no usable CUDA",
                       "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
    return dev


def fast_compute_dtype(device: Any = "cpu") -> str:
    """"bfloat16" where bf16 autocast runs on native instructions: a CUDA device with bf16, or a CPU on
    which oneDNN has a bf16 path (AVX-512 BW/VL/DQ, or Arm's bf16 extension; torch's own check); else
    "float32". A CPU with AVX2 alone emulates bf16 products: there the tiny teacher's SFT step took 20 s
    in bf16 against 0.6 s in fp32 (benchmarks/results/README.md), so bf16 would turn minutes into hours."""
    import torch

    dev = parse_device(device)
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # a torch without oneDNN: no fast bf16 path either
        native = False
    return "bfloat16" if native else "float32"


def resolve_compute_dtype(dtype: str, device: Any = "cpu") -> str:
    """A study's training compute dtype: `dtype` itself, or for "auto" fast_compute_dtype(device)."""
    return fast_compute_dtype(device) if dtype == "auto" else dtype


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """{"dtype": dtype} for from_pretrained, or {"torch_dtype": dtype} before transformers 4.56."""
    # transformers renamed from_pretrained's `torch_dtype` to `dtype` in 4.56; both are supported.
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}

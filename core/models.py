"""Load teacher, student and tokenizer by any name `resolve` understands (skd.core.hub).

Public: `load_model(...)`, `load_tokenizer(...)`, `load_pair(...) -> ModelPair`, `ModelPair`,
`cut_logits(logits, V)`, `freeze(model)`, `weight_bytes(model)`. Shapes: B batch, T time, V vocab.
Names and hub errors live in skd.core.hub, the built-in presets in skd.core.presets, GGUF conversion
and layer pruning in skd.core.convert, dtype/device parsing in skd.core.torch_names.

Every user mistake (unknown name, missing folder, offline hub, mismatched tokenizers) is an
`SkdError` with the fix, never a traceback. torch and transformers are imported inside the
functions that need them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .convert import cached_gguf_folder
from .errors import SkdError
from .hub import ModelSource, first_line, hub_call, remote_code_error, resolve
from .presets import materialize_preset
from .torch_names import dtype_kwarg, parse_device, parse_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def _local_dir(source: ModelSource) -> Path:
    """Folder with config.json for a preset or local source, converting GGUF once if needed."""
    if source.kind == "preset":
        return materialize_preset(source.name)
    if source.gguf_file is not None:
        return cached_gguf_folder(Path(source.location) / source.gguf_file)
    return Path(source.location)


def load_model(name_or_path: str | os.PathLike, *, dtype: Any = "auto", device: Any = "cpu",
               trust_remote_code: bool = False, role: str | None = None) -> "PreTrainedModel":
    """Load a causal LM by preset name, alias, local folder (or .gguf) or hub id.

    dtype: "auto" (the checkpoint's own) | "float32" | "bfloat16" | "float16" | "float64".
    The model is returned as transformers returns it (eval mode); the caller decides train/eval.
    role ("teacher"/"student") only shapes error messages (which CLI option to change).
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    dev = parse_device(device)
    source = resolve(name_or_path)
    kwargs = dict(trust_remote_code=trust_remote_code, **dtype_kwarg(torch_dtype))
    if source.kind == "adapter":   # LoRA adapters: their base model with the adapters merged in
        from .lora import load_adapted

        return load_adapted(Path(source.location), load_base=load_model, dtype=dtype, device=device,
                            trust_remote_code=trust_remote_code, role=role)
    if source.kind == "hub":
        model = hub_call(AutoModelForCausalLM.from_pretrained, source.location, role, **kwargs)
    else:
        folder = _local_dir(source)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as exc:
            if (err := remote_code_error(exc, f"'{folder}'")) is not None:
                raise err from exc
            raise SkdError(f"cannot load a causal LM from '{folder}': {first_line(exc)}",
                           "pass a directory written by save_pretrained (config.json + weights)") from exc
    return model.to(dev)


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False, *,
                   role: str | None = None) -> "PreTrainedTokenizerBase":
    """Load the tokenizer that goes with a model name/path; guarantees a pad token.

    A tokenizer without one gets pad = eos (logged): batched generation needs a pad id. Note that
    then pad_token_id == eos_token_id, so masks must come from lengths, not from `ids != pad`.
    """
    from transformers import AutoTokenizer

    source = resolve(name_or_path)
    if source.kind == "hub":
        tokenizer = hub_call(AutoTokenizer.from_pretrained, source.location, role,
                              trust_remote_code=trust_remote_code)
    else:
        folder = _local_dir(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError) as exc:
            if (err := remote_code_error(exc, f"'{folder}'")) is not None:
                raise err from exc
            raise SkdError(f"cannot load a tokenizer from '{folder}': {first_line(exc)}",
                           "save the tokenizer into the model folder (tokenizer.save_pretrained(folder))") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SkdError(f"the tokenizer of '{name_or_path}' has neither a pad nor an eos token",
                           "use a tokenizer with an end-of-sequence token (set eos_token and save it)")
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("tokenizer of %s has no pad token; using eos %r as pad", name_or_path, tokenizer.eos_token)
    return tokenizer


class ModelPair(NamedTuple):
    """(teacher, student, tokenizer); unpacks as a 3-tuple. vocab_size = len(tokenizer): the
    shared vocabulary; logits may be wider (padded embeddings) and must go through cut_logits."""

    teacher: "PreTrainedModel"
    student: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def _vocab_mismatch(teacher: str, student: str, t_tok: Any, s_tok: Any) -> SkdError | None:
    t_vocab, s_vocab = t_tok.get_vocab(), s_tok.get_vocab()
    details = []
    if t_vocab != s_vocab:
        differing = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:3]
        examples = ", ".join(f"{tok!r}: {t_vocab.get(tok)} vs {s_vocab.get(tok)}" for tok, _ in differing)
        details.append(f"vocabularies differ ({len(t_vocab)} vs {len(s_vocab)} tokens; e.g. {examples})")
    for attr in ("eos_token", "bos_token"):
        t_val, s_val = getattr(t_tok, attr), getattr(s_tok, attr)
        if t_val != s_val:
            details.append(f"{attr} differs ({t_val!r} vs {s_val!r})")
    if not details:
        return None
    return SkdError(f"teacher '{teacher}' and student '{student}' do not share a tokenizer: " + "; ".join(details),
                    "distil within one model family whose tokenizers are identical, e.g. "
                    "gemma-7b-it -> gemma-2b-it or qwen2.5-7b-instruct -> qwen2.5-0.5b-instruct "
                    "(both instruct, or both base)")


def _check_output_width(model: Any, vocab_size: int, name: str) -> None:
    width = model.get_output_embeddings().weight.shape[0]
    if width < vocab_size:
        raise SkdError(f"model '{name}' predicts {width} tokens but its tokenizer has {vocab_size}",
                       "resize the embeddings (model.resize_token_embeddings(len(tokenizer))) and save it")


def weight_bytes(model: "torch.nn.Module") -> int:
    """Bytes of the model's parameters (tied weights counted once), plus the weights that layers keep
    in buffers (skd.core.int8_draft.Int8Linear: weight_buffer_bytes()): what a forward of a few
    positions reads, the dominant cost of one decoding step at a small batch."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(m.weight_buffer_bytes() for m in model.modules() if hasattr(m, "weight_buffer_bytes"))


def freeze(model: "PreTrainedModel") -> "PreTrainedModel":
    """Teacher mode: eval() (no dropout) and no parameter requires grad. Returns the same model."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_pair(teacher: str | os.PathLike, student: str | os.PathLike, *, dtype: Any = "auto",
              teacher_dtype: Any = None, student_dtype: Any = None,
              teacher_device: Any = "cpu", student_device: Any = "cpu",
              trust_remote_code: bool = False) -> ModelPair:
    """Load teacher (frozen) and student plus the shared tokenizer (the student's).

    Tokenizers are compared before any weights are loaded: same token -> id map (get_vocab) and
    same eos/bos, else SkdError. teacher_dtype / student_dtype override `dtype` per model (the
    paper computes in bf16 with fp32 master weights for the student).
    """
    t_tok = load_tokenizer(teacher, trust_remote_code, role="teacher")
    s_tok = load_tokenizer(student, trust_remote_code, role="student")
    if (err := _vocab_mismatch(str(teacher), str(student), t_tok, s_tok)) is not None:
        raise err
    t_model = load_model(teacher, dtype=teacher_dtype or dtype, device=teacher_device,
                         trust_remote_code=trust_remote_code, role="teacher")
    s_model = load_model(student, dtype=student_dtype or dtype, device=student_device,
                         trust_remote_code=trust_remote_code, role="student")
    vocab_size = len(s_tok)
    _check_output_width(t_model, vocab_size, str(teacher))
    _check_output_width(s_model, vocab_size, str(student))
    return ModelPair(freeze(t_model), s_model, s_tok)


def cut_logits(logits: "torch.Tensor", vocab_size: int) -> "torch.Tensor":
    """[..., V_model] -> [..., vocab_size] view. Columns past len(tokenizer) are embedding padding
    (Qwen2.5: 151,936 vs 152,064 rows for a 151,665-token tokenizer) and must never be sampled
    or enter a divergence."""
    width = logits.shape[-1]
    if width < vocab_size:
        raise ValueError(f"logits have {width} columns, fewer than the vocabulary ({vocab_size}); shape {tuple(logits.shape)}")
    return logits if width == vocab_size else logits[..., :vocab_size]

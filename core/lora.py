"""LoRA students through the peft library (optional extra `skd[peft]`; imported only when LoRA is asked for).

Public: ADAPTER_DIR, DEFAULT_TARGETS, require_peft(), default_targets(model), add_adapters(model, *, r, alpha,
dropout, targets, base) -> PeftModel, adapter_folder(folder) -> Path | None, save_adapters(peft_model, folder),
merged_state_dict(model) -> dict, load_adapter_weights(peft_model, folder), load_adapted(folder, ...) -> model,
absolute_base(name) -> str.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): each targeted linear map
W gets a trainable low-rank update (alpha / r) * B A; the base weights stay frozen. The adapters are
injected into the student's own modules, so sampling, the SKD verification loop, evaluation and
speculative decoding all run through the adapted student unchanged (one model object). A training
run writes the adapters in PEFT's format (adapter_config.json + adapter_model.safetensors) in every
step checkpoint, and in `final/` a merged Hugging Face folder (W + (alpha / r) B A, plain
transformers, no peft needed) with the adapters beside it in `final/adapter/`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from skd.core.errors import SkdError

ADAPTER_DIR = "adapter"          # final/adapter: the adapters of a merged final folder
ADAPTER_CONFIG = "adapter_config.json"

# The projections LoRA usually targets per architecture (attention and MLP); other architectures
# get peft's "all-linear" (every linear layer but the output head).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{arch: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
       for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "granite")},
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def require_peft():
    """The peft module, or a one-line error naming the extra."""
    try:
        import peft
    except ImportError as e:
        raise SkdError("LoRA (--lora-r) needs the peft package, which is not installed",
                       "pip install 'skd[peft]' (or pip install peft)") from e
    return peft


def default_targets(model) -> list[str] | str:
    """The module names LoRA targets in `model` when --lora-target-modules is not given."""
    return list(DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), ())) or "all-linear"


def add_adapters(model, *, r: int, alpha: float, dropout: float, targets: tuple[str, ...], base: str):
    """Inject LoRA adapters into `model` in place; returns the PeftModel around it (only adapters train).

    `base` (the student as the user named it: alias, hub id or absolute folder) is recorded as the
    adapters' base model, so an adapter folder can be loaded on its own."""
    peft = require_peft()
    chosen = list(targets) if targets else default_targets(model)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=chosen, bias="none",
                             task_type="CAUSAL_LM", base_model_name_or_path=base,
                             fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")  # Conv1D weights
    try:
        with warnings.catch_warnings():   # peft warns that it renames the base to the model's own path: set below
            warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
            peft_model = peft.get_peft_model(model, config)
    except ValueError as e:   # peft: "Target modules {...} not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in
                        ("Linear", "Conv1D")})
        raise SkdError(f"--lora-target-modules {','.join(chosen) if isinstance(chosen, list) else chosen} matches "
                       f"no module of the student ({str(e).splitlines()[0][:120]})",
                       f"pass names of its linear layers, e.g. {','.join(names[:8])}") from e
    peft_model.peft_config["default"].base_model_name_or_path = base
    return peft_model


def adapter_folder(folder: Path) -> Path | None:
    """Where a folder's PEFT adapters are: the folder itself, its adapter/ subfolder, or None."""
    folder = Path(folder)
    for f in (folder, folder / ADAPTER_DIR):
        if (f / ADAPTER_CONFIG).is_file():
            return f
    return None


def save_adapters(peft_model, folder: Path) -> None:
    """The adapters in PEFT's format (adapter_config.json + adapter_model.safetensors) in `folder`."""
    # save_embedding_layers=False: the embeddings are never adapted here (and peft would look up the base's config).
    peft_model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)


def merged_state_dict(model) -> dict:
    """The plain state dict of a LoRA-injected model with every adapter merged: W + (alpha / r) B A under
    the base model's own names. Computed from the layers' delta weights; the model is not modified."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
            deltas[f"{name}.base_layer.weight"] = delta
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        out[key.replace(".base_layer.", ".")] = value.detach()
    return out


def load_adapter_weights(peft_model, folder: Path) -> None:
    """Copy the adapters saved in `folder` (or its adapter/) into `peft_model`, exactly."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = adapter_folder(folder)
    path = found / "adapter_model.safetensors" if found is not None else None
    if path is None or not path.is_file():
        raise SkdError(f"checkpoint {folder} has no LoRA adapters (adapter_model.safetensors)",
                       "resume a LoRA run from its own checkpoints, or start over with --overwrite")
    result = set_peft_model_state_dict(peft_model, load_file(str(path)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise SkdError(f"checkpoint {folder}: adapters do not match the student ({unexpected[0]})",
                       "resume with the same --student and --lora-* options as the original run")


def load_adapted(folder: Path, *, load_base, **kwargs: Any):
    """A plain model from an adapter folder: its base model (load_base(name, **kwargs)) with the
    adapters merged in (no peft layers left, so inference runs at the base model's speed)."""
    peft = require_peft()
    found = adapter_folder(folder)
    try:
        base_name = json.loads((found / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SkdError(f"cannot read the base model of the adapters in {found}",
                       "the adapter_config.json needs base_model_name_or_path") from e
    if not base_name:
        raise SkdError(f"the adapters in {found} do not name their base model",
                       "set base_model_name_or_path in its adapter_config.json")
    base = load_base(base_name, **kwargs)
    dev = next(base.parameters()).device
    model = peft.PeftModel.from_pretrained(base, str(found), is_trainable=False)
    return model.merge_and_unload().to(dev)


def absolute_base(name: str) -> str:
    """A student name as recorded for its adapters: a local folder as an absolute path, else as given."""
    p = Path(os.path.expanduser(name))
    return str(p.resolve()) if p.exists() else name

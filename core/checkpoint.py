"""Checkpoints: the one place that writes and reads them, always atomically and without pickle.

Public: save_checkpoint(path, student, tokenizer, cfg, state, ...), atomic_write_text(path, text),
find_latest_checkpoint(run_dir) -> Path | None, read_trainer_state(folder) -> dict | None,
load_weights(folder, model), load_training_state(folder) -> dict, capture_rng() -> dict,
restore_rng(state), remove_stale(run_dir), discard(folder), MARKER.

A checkpoint is a Hugging Face folder (config + safetensors weights + tokenizer) plus
  skd_run_config.json   the resolved run configuration;
  training_state.pt     optimizer, scheduler and RNG states: tensors, numbers, lists and dicts only,
                        read back with torch.load(weights_only=True) (no pickled code);
  trainer_state.json    step, data cursor, ... written LAST: the completion marker.
The folder is written under a hidden temporary name, fsync'ed and renamed into place, so a kill
at any moment leaves either the previous checkpoint or the new complete one; readers also ignore
any folder without a readable marker.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from skd.core.config import run_config_to_dict
from skd.core.errors import SkdError, default_mode

MARKER = "trainer_state.json"
TRAINING_STATE = "training_state.pt"
RUN_CONFIG = "skd_run_config.json"


def _fsync_tree(folder: Path) -> None:
    """Flush every file and the folder itself: the rename must not outrun the data (power loss)."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_dir_write(final: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling folder, then rename: a kill never leaves a half checkpoint."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
        write(tmp)
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary name in the same folder and os.replace (never torn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- RNG states

def capture_rng() -> dict:
    """Every process-global RNG state, in weights_only-loadable form (tensors, ints, lists)."""
    version, internal, gauss = random.getstate()
    state = {"python": {"version": version, "state": list(internal), "gauss": gauss},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # numpy is optional; nothing to record
        return state
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))


# --------------------------------------------------------------------------- writing

def save_checkpoint(path: Path, student, tokenizer, cfg, state: dict, optimizer=None, scheduler=None, *,
                    state_dict: dict | None = None, optimizer_state: dict | None = None,
                    rng: dict | None = None, write_model: Callable[[Path], None] | None = None) -> None:
    """HF folder (safetensors + config + tokenizer) + run config + training state + marker, atomically.

    `state_dict` / `optimizer_state` override the ones read from `student` / `optimizer` (FSDP
    gathers them first); `rng` defaults to the process's RNG states now; `write_model(folder)`
    replaces the student's save_pretrained (LoRA runs write their adapters, skd.core.lora).
    """
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    rng = capture_rng() if rng is None else rng

    def write(tmp: Path):
        if write_model is not None:
            write_model(tmp)
        else:
            student.save_pretrained(tmp, state_dict=state_dict)  # safetensors (transformers' only format)
        tokenizer.save_pretrained(tmp)
        (tmp / RUN_CONFIG).write_text(json.dumps(run_config_to_dict(cfg), indent=2))
        if optimizer_state is not None:
            torch.save({"optimizer": optimizer_state,
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "rng": rng}, tmp / TRAINING_STATE)
        # Last: a folder with a readable marker is complete (SKD resume ignores the others).
        (tmp / MARKER).write_text(json.dumps({**state, "complete": True}, indent=2))

    atomic_dir_write(Path(path), write)


def discard(folder: Path) -> None:
    """Remove a checkpoint: renamed to a hidden name first, so a kill mid-delete leaves nothing that looks complete."""
    trash = folder.with_name(f".{folder.name}.trash-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale(run_dir: Path) -> None:
    """Delete the hidden leftovers of writes or deletes that a kill interrupted."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and any(t in p.name for t in (".tmp-", ".old-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading

def read_trainer_state(folder: Path) -> dict | None:
    """The marker's content, or None when the folder is not a complete checkpoint."""
    try:
        state = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not state.get("complete"):
        return None
    return state


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in run_dir (final wins a tie), or None."""
    candidates = [run_dir / "final"] + sorted((run_dir / "checkpoints").glob("step-*"))
    best, best_step = None, -1
    for folder in candidates:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        state = read_trainer_state(folder)
        if state is not None and state["step"] > best_step:
            best, best_step = folder, state["step"]
    return best


def load_training_state(folder: Path) -> dict:
    """Optimizer / scheduler / RNG states; weights_only=True: nothing in the file can run code."""
    path = folder / TRAINING_STATE
    if not path.is_file():
        raise SkdError(f"checkpoint {folder} has no {TRAINING_STATE} (saved without the optimizer state)",
                       "resume from a checkpoint written by skd training, or start over with --overwrite")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SkdError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                       "delete that checkpoint folder to resume from an earlier one, or use --overwrite") from e


def load_weights(folder: Path, model) -> None:
    """Copy the safetensors weights of `folder` into `model` (same architecture), exactly.

    Keys missing from the files must be tied to a loaded tensor (save_pretrained writes a tied
    tensor once); anything else missing or unexpected is an error.
    """
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SkdError(f"checkpoint {folder} has no .safetensors weights",
                       "resume from a checkpoint written by skd training, or start over with --overwrite")
    loaded: dict = {}
    for f in files:
        loaded.update(load_file(str(f)))
    own = model.state_dict()
    unexpected = sorted(set(loaded) - set(own))
    missing = sorted(set(own) - set(loaded))
    ptr = {own[k].data_ptr() for k in loaded if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in ptr]
    if unexpected or untied:
        # transformers may save some architectures under their original checkpoint names; its own
        # loader maps them back (still safetensors, still no code from the folder).
        loaded = _load_via_transformers(folder, model, own)
    with torch.no_grad():
        for k, v in loaded.items():
            if own[k].shape != v.shape:
                raise SkdError(f"checkpoint {folder}: tensor {k} has shape {tuple(v.shape)}, the model "
                               f"{tuple(own[k].shape)}", "resume with the same --student model as the original run")
            own[k].copy_(v)


def _load_via_transformers(folder: Path, model, own: dict) -> dict:
    from skd.core.torch_names import dtype_kwarg

    try:
        other = type(model).from_pretrained(str(folder), **dtype_kwarg(next(model.parameters()).dtype))
    except Exception as e:
        raise SkdError(f"cannot load the weights of checkpoint {folder}: {str(e).splitlines()[0]}",
                       "resume with the same --student model as the original run, or start over with --overwrite") from e
    loaded = other.state_dict()
    if set(loaded) != set(own):
        diff = sorted(set(loaded) ^ set(own))
        raise SkdError(f"checkpoint {folder} does not match the model ({len(diff)} differing tensors, e.g. {diff[0]})",
                       "resume with the same --student model as the original run, or start over with --overwrite")
    return loaded

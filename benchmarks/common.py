"""Shared pieces of the benchmarks: environment record, model/prompt loading, timing, JSON output.

Public: env_info(device) -> dict, load_model_and_tokenizer(name, device, dtype), task_prompts(task,
tokenizer, n, split, seed) -> list[list[int]], timed(fn, device) -> (result, seconds),
write_json_line(path, record), save_plot(path, draw), read_json(path), cached_result(path, stamp),
write_json_atomic(path, data) (the resumable studies' per-stage result files).
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(device: torch.device) -> dict:
    """Device, versions and threads: stored with every result so only like is compared with like."""
    from importlib.metadata import version

    import transformers

    from skd.core import ops

    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "device_name": device_name(device), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "skd": version("skd"), "torch": torch.__version__, "transformers": transformers.__version__,
            "ops_backend": ops.backend(), "python": platform.python_version()}


def load_model_and_tokenizer(name: str, device: str = "cpu", dtype: str = "float32"):
    from skd.core import models

    model = models.load_model(name, dtype=dtype, device=device)
    model.eval()
    model.requires_grad_(False)
    return model, models.load_tokenizer(name)


def task_prompts(task_name: str, tokenizer, n: int, split: str = "test", seed: int = 20,
                 data: str | None = None) -> tuple[list[list[int]], object]:
    """Prompt token ids of n examples of a task, rendered through the chat template."""
    from skd.core.tasks import get_task
    from skd.core.data import tokenize_examples

    task = get_task(task_name)
    examples = task.load(split, data_path=data, limit=n, seed=seed)
    return [t.prompt_ids for t in tokenize_examples(examples, tokenizer, task.render_prompt)], task


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a stage to redo)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cached_result(path: Path, stamp: str) -> dict | None:
    """A cached stage's result.json when it holds this config stamp and status "ok", else None."""
    d = read_json(path)
    return d if d is not None and d.get("stamp") == stamp and d.get("status") == "ok" else None


def write_json_atomic(path: Path, data: dict) -> None:
    from skd.core.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return x.item()
    return x


def write_json_line(path: str | Path, record: dict) -> None:
    """Append one JSON line (written whole, then fsynced: a kill never leaves half a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_jsonable(record)) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def save_plot(path: str | Path, draw: Callable) -> str | None:
    """Draw with matplotlib (Agg) into a PNG written atomically; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw(plt)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)

"""The stage engine of the studies (`skd demo`, `skd bench reproduce`, `skd bench real-model`).

Public: Emit, config_stamp(cfg, *fields, schema, **extra), read_json(path), cached_result(path, stamp),
write_json_atomic(path, data), read_metrics(folder), sft_done(folder, stamp), cached_sft(...),
stage_done(folder, stamp), StageLog, resumable_stage(...).

A stage is named by a stamp: a short hash of the config fields (and identities of its inputs) that
determine its output; a rerun with the same stamp reuses the stage, any change redoes it. Two
completion markers:
  recipe.txt   a finished SFT stage: <folder>/recipe.txt holds the stamp next to a complete
               <folder>/final checkpoint (cached_sft; the demo's and the study's inits);
  result.json  a finished stage or measurement: the file holds the stamp and status "ok"
               (cached_result); a training stage also needs <folder>/final (stage_done). A stage
               whose stamp.txt holds the stamp but has no result yet was stopped: resumable_stage
               continues it from its latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from skd.core.studies.report import correction_summary

Emit = Callable[[str, dict], None]


def _no_events(kind: str, payload: dict) -> None:
    return None


def config_stamp(cfg, *fields: str, schema: str | None = None, **extra: Any) -> str:
    """12 hex digits of the sha1 of `cfg`'s `fields`, the `extra` identities and the `schema` (when given).
    A `task` field also stamps the task's data fingerprint (a change of a built-in generator invalidates)."""
    d = dataclasses.asdict(cfg)
    payload = {**{f: d[f] for f in fields}, **extra}
    if schema is not None:
        payload["schema"] = schema
    if "task" in fields:
        from skd.core.tasks import get_task

        payload["task_data"] = get_task(d["task"]).fingerprint()
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a stage to redo)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cached_result(path: Path, stamp: str) -> dict | None:
    """A cached stage's result file when it holds this stamp and status "ok", else None."""
    d = read_json(path)
    return d if d is not None and d.get("stamp") == stamp and d.get("status") == "ok" else None


def write_json_atomic(path: Path, data: dict, *, one_line: bool = False) -> None:
    """Write `data` as JSON (indented, or one line ending in a newline) via a temporary file (never torn)."""
    from skd.core.checkpoint import atomic_write_text

    text = json.dumps(data, default=str) + "\n" if one_line else json.dumps(data, indent=2, default=str)
    atomic_write_text(Path(path), text)


def read_metrics(folder: Path) -> list[dict]:
    """The per-step rows of a training run's <folder>/metrics.jsonl."""
    return [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines() if x.strip()]


# --------------------------------------------------------------------------- recipe.txt stages

def sft_done(folder: Path, stamp: str) -> bool:
    """<folder>/recipe.txt holds `stamp` and <folder>/final is a complete checkpoint."""
    folder = Path(folder)
    recipe = folder / "recipe.txt"
    return (folder / "final" / "trainer_state.json").exists() and recipe.exists() \
        and recipe.read_text().strip() == stamp


def cached_sft(folder: Path, stamp: str, run, *, name: str, emit: Emit | None = None, models=None,
               examples=None) -> tuple[Path, float | None]:
    """Train `run` into `folder` unless sft_done(folder, stamp). Returns (folder / "final", wall seconds,
    or None when cached). Events: "cached" / "stage", and f"{name}:{kind}" for the training loop's own."""
    from skd.core.train import train

    emit = emit or _no_events
    folder = Path(folder)
    if sft_done(folder, stamp):
        emit("cached", {"stage": name, "path": str(folder / "final")})
        return folder / "final", None
    emit("stage", {"stage": name, "steps": run.train.max_steps})
    t0 = time.perf_counter()
    train(run, on_event=lambda k, p: emit(f"{name}:{k}", p), models=models, examples=examples)
    (folder / "recipe.txt").write_text(stamp + "\n")
    return folder / "final", time.perf_counter() - t0


# --------------------------------------------------------------------------- result.json stages

def stage_done(folder: Path, stamp: str) -> bool:
    """<folder>/result.json holds `stamp` (status "ok") and <folder>/final is a model folder."""
    folder = Path(folder)
    return cached_result(folder / "result.json", stamp) is not None and (folder / "final" / "config.json").is_file()


class StageLog:
    """What one invocation did, stage by stage: wall and process CPU seconds, or "cached"."""

    def __init__(self) -> None:
        self.stages: list[dict] = []

    @staticmethod
    def clock() -> tuple[float, float]:
        """(wall, process CPU) seconds now: the `since` of record()."""
        return time.perf_counter(), time.process_time()

    def record(self, stage: str, since: tuple[float, float] | None) -> float:
        """Add `stage`: wall and process CPU seconds (all threads) since `since` (from clock()), or a cached
        stage (None). CPU / threads approximates the wall time on an idle machine. Returns the wall seconds."""
        wall, cpu = (0.0, 0.0) if since is None else (time.perf_counter() - since[0], time.process_time() - since[1])
        self.stages.append({"stage": stage, "cached": since is None, "wall_s": wall, "cpu_s": cpu})
        return wall


def resumable_stage(folder: Path, stamp: str, run, *, name: str, emit: Emit, log: StageLog, models=None,
                    examples=None) -> dict:
    """Train `run` into `folder` unless stage_done(folder, stamp). A folder whose stamp.txt holds `stamp` but
    no result (a stopped stage) resumes from its latest checkpoint; any other content is replaced. Returns
    the stage's result.json record with "checkpoint" and "cached"; events "cached" / "stage" and
    f"train:{kind}" (with "stage": name) for the training loop's own."""
    from skd.core.checkpoint import atomic_write_text, find_latest_checkpoint
    from skd.core.train import train

    folder = Path(folder)
    if stage_done(folder, stamp):   # the recorded numbers; the model where the run dir is now
        emit("cached", {"stage": name, "path": str(folder / "final")})
        log.record(name, None)
        return {**cached_result(folder / "result.json", stamp), "checkpoint": str(folder / "final"), "cached": True}
    owned = (folder / "stamp.txt").is_file() and (folder / "stamp.txt").read_text().strip() == stamp
    resume = owned and folder.is_dir() and find_latest_checkpoint(folder) is not None
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "stamp.txt", stamp + "\n")
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, resume=resume, overwrite=not resume))
    emit("stage", {"stage": name, "steps": run.train.max_steps, "resume": resume})
    since = log.clock()
    summary = train(run, on_event=lambda kind, p: emit(f"train:{kind}", {**p, "stage": name}),
                    models=models, examples=examples)
    wall = log.record(name, since)
    steps = read_metrics(folder)
    rec = {"stamp": stamp, "status": "ok", "train_wall_s": wall, "resumed_from": summary.get("resumed_from"),
           "steps": len(steps), "final_loss": steps[-1]["loss"] if steps else None,
           "loss_curve": [[m["step"], m["loss"]] for m in steps], **correction_summary(steps),
           "step_s_mean": statistics.fmean(m["time_step"] for m in steps) if steps else None,
           "checkpoint": str(folder / "final"), "train_cpu_s": log.stages[-1]["cpu_s"]}
    write_json_atomic(folder / "result.json", rec)
    return {**rec, "cached": False}

"""The run directory (--output-dir): what may be written there, resuming, and its rolling checkpoints.

Public: RUN_FILES (what a run writes in its folder); check_output_dir(out, cfg) -> Path | None (read-only
checks before anything is loaded; the checkpoint to resume); check_resume_config(cfg, folder);
prepare_output_dir(out, overwrite=, resume_step=) (clear or trim, after every check passed);
prune_checkpoints(folder, keep).
"""
from __future__ import annotations

import json
from pathlib import Path

from skd.core import checkpoint as ckpt
from skd.core.batches import RNG_SCHEME
from skd.core.config import RunConfig, run_config_to_dict
from skd.core.errors import SkdError

RUN_FILES = ("final", "checkpoints", "metrics.jsonl", "run_config.json", "summary.json", "tensorboard", "wandb")

# Options that may change between a run and its resumption: they do not change the trained weights.
# (report_to only adds a copy of metrics.jsonl's scalars; gradient_checkpointing recomputes the same
# activations with the same kernels: bit-identical weights, tested.)
_RESUME_FREE = {"train": {"output_dir", "overwrite", "resume", "save_every", "keep_checkpoints", "eval_every",
                          "report_to", "gradient_checkpointing"},
                "data": {"val_data", "val_limit"}, "model": {"teacher_device", "student_device"}}


def check_output_dir(out: Path, cfg: RunConfig) -> Path | None:
    """Read-only checks of --output-dir before anything is loaded; returns the checkpoint to resume.

    --resume with no complete checkpoint returns None (the run starts fresh) when the folder is
    new, empty or holds this same run's files (preempted before its first checkpoint); another
    run's files there are refused."""
    tc = cfg.train
    if out.exists() and not out.is_dir():
        raise SkdError(f"output directory {out} is a file", "pass another --output-dir")
    if tc.resume:
        found = ckpt.find_latest_checkpoint(out) if out.is_dir() else None
        if found is not None:
            check_resume_config(cfg, found)
        elif out.is_dir():
            _check_same_run(cfg, out)
        return found
    if (out.is_dir() and any((out / n).exists() for n in ("final", "checkpoints", "metrics.jsonl"))
            and not tc.overwrite):
        raise SkdError(f"{out} already holds another run's checkpoints",
                       "pass --resume to continue it, --overwrite to replace it, or choose another --output-dir")
    return None


def _option_diffs(cfg: RunConfig, saved: dict) -> list[str]:
    """The options of `cfg` that differ from a saved run config, ignoring those free to change on resume.
    A setting the saved config lacks (written before the setting existed) had its default value."""
    now = json.loads(json.dumps(run_config_to_dict(cfg)))  # tuples -> lists, as saved
    # A setting added after the run was saved is absent from its file: it ran with that setting's default.
    default = json.loads(json.dumps(run_config_to_dict(RunConfig())))
    # Before `task_stops` existed, --stop replaced the task's stop strings: a run saved then that had
    # --stop ran with task_stops off.
    legacy = {("sample", "task_stops"): not saved.get("sample", {}).get("stop_strings")}

    def was(sec, key):
        return saved.get(sec, {}).get(key, legacy.get((sec, key), default[sec][key]))

    return [f"{key} {was(sec, key)!r} -> {value!r}"
            for sec, fields in now.items() for key, value in fields.items()
            if key not in _RESUME_FREE.get(sec, ()) and was(sec, key) != value]


def _check_same_run(cfg: RunConfig, out: Path) -> None:
    """--resume found no checkpoint: the run files in `out` must be this run's (same options)."""
    present = [n for n in RUN_FILES if (out / n).exists()]
    if not present:
        return
    try:
        saved = json.loads((out / "run_config.json").read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise SkdError(f"--resume: {out} holds another run's files ({', '.join(present)}) but no complete checkpoint",
                       "pass --overwrite to replace them, or choose another --output-dir")
    diffs = _option_diffs(cfg, saved)
    if diffs:
        raise SkdError(f"--resume: {out} holds another run's files but no complete checkpoint; its options differ"
                       f" ({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''})",
                       f"pass its options (saved in {out / 'run_config.json'}), --overwrite to replace it, "
                       "or choose another --output-dir")


def check_resume_config(cfg: RunConfig, folder: Path) -> None:
    """Refuse to resume checkpoint `folder` with options that change the trained weights, or a foreign RNG scheme."""
    try:
        saved = json.loads((folder / ckpt.RUN_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise SkdError(f"checkpoint {folder} has no readable {ckpt.RUN_CONFIG}",
                       "delete that folder to resume from an earlier checkpoint, or start over with --overwrite") from e
    diffs = _option_diffs(cfg, saved)
    if diffs:
        raise SkdError(f"--resume: the options differ from the run in {folder.parent if folder.name != 'final' else folder}"
                       f" ({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''})",
                       f"pass the original options (saved in {folder / ckpt.RUN_CONFIG}), or --overwrite to start over")
    state = ckpt.read_trainer_state(folder) or {}
    if state.get("rng_scheme", RNG_SCHEME) != RNG_SCHEME:
        raise SkdError(f"checkpoint {folder} was written by an skd that samples differently "
                       f"({state.get('rng_scheme')} vs {RNG_SCHEME})", "start over with --overwrite")


def prepare_output_dir(out: Path, *, overwrite: bool, resume_step: int | None) -> None:
    """Main process only, after every check passed: clear (--overwrite) or trim (--resume) the run."""
    if overwrite:
        for n in RUN_FILES:
            p = out / n
            if p.is_dir():
                ckpt.discard(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale(out)
    metrics = out / "metrics.jsonl"
    if resume_step is not None and metrics.exists():
        # Lines past the resumed step (and a line torn by a kill) are redone by this run.
        keep = []
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= resume_step:
                keep.append(line + "\n")
        ckpt.atomic_write_text(metrics, "".join(keep))


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints in `folder` (final is never here)."""
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep)]:
        ckpt.discard(p)

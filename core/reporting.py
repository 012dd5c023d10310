"""Where a run's scalars go besides metrics.jsonl (which stays the source of truth): TensorBoard, W&B.

Public: Reporter (the interface: start(run_dir, config, start_step=0), log(step, record), close());
reporter_for(name, *, main_process) -> Reporter; numeric_scalars(record) -> dict[str, float];
TENSORBOARD_DIR, WANDB_DIR (their folders in the run directory); wandb_mode(); WANDB_INIT_TIMEOUT_S.

reporter_for imports the optional package at once, so a missing one fails in the run's set-up, before
anything in the output folder changes, as one SkdError naming the extra to install; the other
processes of a multi-process run get a reporter that does nothing (only the main process reports).
log() takes the metrics.jsonl record as written and sends its numeric scalars under their own names
(lists such as switch_positions, and None values, are left out; the step is the x axis).

Resuming: TensorBoard's writer purges the events at and after the first step this run redoes (the
reader hides them), so a step is never shown twice; W&B continues the same run id (saved in the run
folder), in offline mode unless WANDB_MODE or WANDB_API_KEY say otherwise; an online run whose server
cannot be reached within WANDB_INIT_TIMEOUT_S logs offline instead, with a warning.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import time
import warnings
from pathlib import Path

from skd.core.errors import SkdError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
_WANDB_ID_FILE = "skd-run-id"   # inside WANDB_DIR: the W&B run a resumed run continues
WANDB_INIT_TIMEOUT_S = 30.0     # online: how long W&B may wait for its server before the run goes offline


class Reporter:
    """The interface, and the reporter of `--report-to none`: every method does nothing."""

    def start(self, run_dir: Path, config: dict, start_step: int = 0) -> None:
        """Open the sink for the run in `run_dir` (config: the resolved run config, as run_config.json);
        `start_step`: the steps already done (a resumed run logs from start_step + 1)."""

    def log(self, step: int, record: dict) -> None:
        """Send the numeric scalars of one metrics.jsonl record at `step`."""

    def close(self) -> None:
        """Flush and close (also after an error or a stop)."""


def numeric_scalars(record: dict) -> dict[str, float]:
    """The int / float entries of a metrics record, but its step (bools, None, lists and text left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _missing(extra: str, package: str) -> SkdError:
    return SkdError(f"--report-to {extra} needs the {package} package, which is not installed",
                    f"pip install 'skd[{extra}]', or pass --report-to none")


def _flat(config: dict, prefix: str = "") -> dict:
    """{"train.lr": 1e-5, ...}: nested config sections as dotted keys, values as numbers, bools or text."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:   # None, tuples of stop strings, ...
            out[key] = json.dumps(v)
    return out


class TensorBoardReporter(Reporter):
    """torch.utils.tensorboard's SummaryWriter under <run_dir>/tensorboard: one scalar per metrics key,
    the run config as text ("run_config") and as hyper-parameters (the HPARAMS tab)."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter, summary
        except ImportError as e:   # torch's module raises when the tensorboard package is absent
            raise _missing("tensorboard", "tensorboard") from e
        self._writer_cls, self._summary = SummaryWriter, summary
        self.writer = None

    def start(self, run_dir: Path, config: dict, start_step: int = 0) -> None:
        log_dir = Path(run_dir) / TENSORBOARD_DIR
        earlier = _event_file_seconds(log_dir)
        # A resumed run redoes the steps after its checkpoint: the purge hides the earlier run's events
        # from start_step + 1 on (events of a fresh run started over in the same folder: all of them).
        purge = start_step + 1 if earlier else None
        if earlier:
            # Event files are read in name order and a name starts with its creation second; within one
            # second the names compare process id and a counter as text, which could put this file (and
            # its purge) before the events it hides.
            while int(time.time()) <= max(earlier):
                time.sleep(0.05)
        self.writer = self._writer_cls(log_dir=str(log_dir), purge_step=purge)
        text = json.dumps(config, indent=2)
        self.writer.add_text("run_config", "```\n" + text + "\n```", global_step=start_step)
        exp, ssi, sei = self._summary.hparams(_flat(config), {"loss": math.nan})
        for s in (exp, ssi, sei):
            self.writer.file_writer.add_summary(s, start_step)
        self.writer.flush()

    def log(self, step: int, record: dict) -> None:
        for k, v in numeric_scalars(record).items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()   # a killed run keeps every step it wrote to metrics.jsonl

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _event_file_seconds(log_dir: Path) -> list[int]:
    """Creation seconds of the event files in `log_dir` (events.out.tfevents.<seconds>.<host>...)."""
    out = []
    for p in log_dir.glob("events.out.tfevents.*") if log_dir.is_dir() else ():
        try:
            out.append(int(p.name.split(".")[3]))
        except (IndexError, ValueError):
            out.append(int(p.stat().st_mtime))
    return out


def wandb_mode() -> str:
    """W&B's mode: WANDB_MODE when set, else online only when WANDB_API_KEY is set, else offline
    (nothing waits for a network that is not there; `wandb sync <run>/wandb/offline-run-*` uploads later)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbReporter(Reporter):
    """A W&B run in <run_dir>/wandb: the run config as its config, each metrics key as a scalar at the step.
    WANDB_PROJECT names the project (default "skd"); the run is named after the run folder."""

    def __init__(self):
        try:
            import wandb
        except ImportError as e:
            raise _missing("wandb", "wandb") from e
        self.wandb = wandb
        self.run = None

    def start(self, run_dir: Path, config: dict, start_step: int = 0) -> None:
        wandb = self.wandb
        folder = Path(run_dir) / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / _WANDB_ID_FILE
        run_id = id_file.read_text().strip() if start_step > 0 and id_file.exists() else None
        if not run_id:
            run_id = secrets.token_hex(4)   # W&B run ids: lower-case letters and digits
            id_file.write_text(run_id + "\n")
        mode = wandb_mode()

        def init(mode: str):
            return wandb.init(project=os.environ.get("WANDB_PROJECT", "skd"), name=Path(run_dir).resolve().name,
                              dir=str(run_dir), id=run_id, resume="allow", mode=mode, config=config,
                              settings=wandb.Settings(console="off",   # the progress bar stays ours
                                                      init_timeout=WANDB_INIT_TIMEOUT_S))
        try:
            self.run = init(mode)
        except Exception as e:   # online: no network, a bad key, ...
            if mode == "offline":
                raise SkdError(f"W&B could not start an offline run in {folder} ({type(e).__name__}: {e})",
                               "check that the folder is writable, or pass --report-to none") from e
            # Logging must not stop a training run: without a server the run is kept offline.
            warnings.warn(f"skd: W&B could not start a run in {mode} mode ({type(e).__name__}: {e}); logging "
                          f"offline to {folder} instead (upload it later with `wandb sync`)", RuntimeWarning,
                          stacklevel=2)
            getattr(wandb, "teardown", lambda: None)()   # the failed run still holds its id in W&B's service
            self.run = init("offline")

    def log(self, step: int, record: dict) -> None:
        self.run.log(numeric_scalars(record), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


_REPORTERS = {"none": Reporter, "tensorboard": TensorBoardReporter, "wandb": WandbReporter}


def reporter_for(name: str, *, main_process: bool = True) -> Reporter:
    """The reporter of `--report-to name`. Its package is imported on every process (a missing one is
    an SkdError naming the extra); only the main process gets a reporter that sends anything."""
    if name not in _REPORTERS:
        raise SkdError(f"unknown --report-to {name!r}", f"use one of: {', '.join(_REPORTERS)}")
    reporter = _REPORTERS[name]()
    return reporter if main_process else Reporter()

"""Where a result was measured: device, versions and threads, stored with every benchmark and study result.

Public: device_name(device) -> str, env_info(device) -> dict, env_line(env) -> str.
Stored beside the numbers so that only like is compared with like (a CPU run against a GPU run,
one torch against another).
"""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (from /proc/cpuinfo on Linux)."""
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


def env_line(env: dict) -> str:
    """One line naming an env_info record: device name, torch, threads, ops backend (a table caption)."""
    return f"{env['device_name']} · torch {env['torch']} · {env['threads']} threads · ops {env['ops_backend']}"

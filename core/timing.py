"""Clock readings that mean what they say on a GPU, and the time spent inside model forwards.

Public: sync(*devices), clock(*devices) -> float, ForwardClock(*models).

CUDA kernels run asynchronously: a plain time.perf_counter() after a GPU call counts only the kernel
launches. clock() first waits for every named CUDA device, so differences of clock() readings are the
work done in between. ForwardClock adds up the wall time spent inside the forwards of the given models
(device-synced at entry and exit), so a phase's time can be split into model compute and everything
else (sampling bookkeeping, top-K tests, splicing, the divergence).
"""
from __future__ import annotations

import time


def _cuda_devices(devices) -> list:
    import torch   # lazily: modules that only time things must not make `skd --help` import torch

    out = []
    for d in devices:
        if d is None:
            continue
        d = torch.device(d)
        if d.type == "cuda" and d not in out:
            out.append(d)
    return out


def sync(*devices) -> None:
    """Wait for the queued work of every CUDA device in `devices` (others are ignored)."""
    devices = _cuda_devices(devices)
    if devices:
        import torch

        for d in devices:
            torch.cuda.synchronize(d)


def clock(*devices) -> float:
    """time.perf_counter() after the CUDA devices among `devices` finished their queued work."""
    sync(*devices)
    return time.perf_counter()


class ForwardClock:
    """Wall seconds inside the top-level forward calls of `models` (None entries are skipped).

    Use as a context manager: hooks are attached on entry and removed on exit; `seconds` and `calls`
    accumulate over the block. Each forward is timed between two synced clock readings."""

    def __init__(self, *models):
        self.models = [m for m in models if m is not None]
        self.devices = []
        for m in self.models:
            p = next(m.parameters(), None)
            if p is not None and p.device not in self.devices:
                self.devices.append(p.device)
        self.seconds = 0.0
        self.calls = 0
        self._handles = []
        self._start: dict[int, float] = {}

    def _pre(self, module, args):
        self._start[id(module)] = clock(*self.devices)

    def _post(self, module, args, output):
        start = self._start.pop(id(module), None)
        if start is not None:
            self.seconds += clock(*self.devices) - start
            self.calls += 1

    def __enter__(self) -> "ForwardClock":
        for m in self.models:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

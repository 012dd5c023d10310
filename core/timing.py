"""Clock readings that mean what they say on a GPU, and the time spent inside model forwards.

Public: sync(*devices), clock(*devices) -> float, ForwardClock(*models).

CUDA kernels run asynchronously: a plain time.perf_counter() after a GPU call counts only the kernel
launches. clock() first waits for every named CUDA device, so differences of clock() readings are the
work done in between. ForwardClock adds up the wall time spent inside the forwards of the given models
(their bodies and output layers where a pass runs them apart; device-synced at entry and exit), so a phase's time can be split into model compute and everything
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
    """Wall seconds inside the forwards of `models` (None entries are skipped).

    A model's forward counts from its outermost call: the whole model's, or, where a pass runs the
    body and the output layer apart (skd.core.split_head), each of those; calls nested inside one
    already timed are not counted again. Use as a context manager: hooks are attached on entry and
    removed on exit; `seconds` and `calls` accumulate over the block. Each outermost call is timed
    between two synced clock readings."""

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
        self._depth: dict[int, int] = {}     # per model: forwards of it or its parts now running
        self._start: dict[int, float] = {}

    def _pre(self, key: int):
        def pre(module, args):
            depth = self._depth.get(key, 0)
            if depth == 0:
                self._start[key] = clock(*self.devices)
            self._depth[key] = depth + 1
        return pre

    def _post(self, key: int):
        def post(module, args, output):
            depth = self._depth.get(key, 0) - 1
            self._depth[key] = max(depth, 0)
            start = self._start.pop(key, None) if depth == 0 else None
            if start is not None:
                self.seconds += clock(*self.devices) - start
                self.calls += 1
        return post

    def __enter__(self) -> "ForwardClock":
        from skd.core.split_head import split_head

        for m in self.models:
            key, split = id(m), split_head(m)
            for part in [m] + ([split.body, split.head] if split is not None else []):
                self._handles.append(part.register_forward_pre_hook(self._pre(key)))
                self._handles.append(part.register_forward_hook(self._post(key)))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

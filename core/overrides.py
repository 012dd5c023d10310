"""Layered configuration values: a config's defaults < a preset (e.g. --quick) < explicit options.

Public: `with_overrides(cfg, preset, explicit)`. Every command that offers a smoke-scale preset
applies it through this one function, so "explicit options win over the preset" holds everywhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

C = TypeVar("C")


def with_overrides(cfg: C, preset: Mapping[str, Any] | None = None, explicit: Mapping[str, Any] | None = None) -> C:
    """`cfg` with `preset`'s values, then the explicitly given ones (None means "not given")."""
    values = dict(preset or {})
    values.update({k: v for k, v in (explicit or {}).items() if v is not None})
    return dataclasses.replace(cfg, **values) if values else cfg

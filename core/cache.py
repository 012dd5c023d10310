"""The skd cache folder and folders built there once, atomically.

Public: `cache_root()` ($SKD_CACHE, else ~/.cache/skd), `cache_digest(*parts)` (a short hash for
folder names, with the cache format folded in), `materialize_dir(target, build)` (build a folder
once through a temporary sibling and a rename). Used by the presets and the GGUF conversion.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import default_mode

logger = logging.getLogger(__name__)

# Bumped when the layout of a materialised folder changes, so stale caches are rebuilt.
_CACHE_FORMAT = 1


def cache_root() -> Path:
    """$SKD_CACHE, else ~/.cache/skd. Read on every call so tests can point it elsewhere."""
    env = os.environ.get("SKD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skd"


def cache_digest(*parts: Any) -> str:
    """10-hex-digit hash of the cache format and `parts` (JSON, keys sorted): a cache folder's key."""
    blob = json.dumps([_CACHE_FORMAT, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def materialize_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first if absent. build(tmp) writes into a temporary sibling
    which is then renamed: a crash never leaves a half-written folder that later looks complete,
    and when two processes race, the second rename fails and the first result is used."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        logger.info("another process materialised %s first; using it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

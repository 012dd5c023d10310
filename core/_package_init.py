"""skd: Speculative Knowledge Distillation (Xu et al., ICLR 2025) for Hugging Face causal LMs.

Installed as the file `skd/__init__.py`. Importing `skd` is cheap: torch, transformers and the
compiled ops are imported only by the modules that need them (`skd.core.*`).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("skd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

"""User-facing errors.

`SkdError(problem, fix)` is raised by the library for bad input (missing files, impossible option
values, offline hub ids, mismatched tokenizers, ...). The CLI prints it as one line,
"error: <problem> — <fix>", and exits non-zero without a traceback (unless --debug).
"""
from __future__ import annotations


class SkdError(Exception):
    """A problem the user can fix. `str(err)` is a single line naming the problem and the fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(self.problem + (f" — {self.fix}" if self.fix else ""))


def default_mode(directory: bool) -> int:
    """Permission bits a plain open()/mkdir() would give under the current umask.

    tempfile.mkstemp / mkdtemp create 0600 / 0700 entries (private by design); outputs written
    through them and then renamed into place get the ordinary permissions back with this.
    """
    import os

    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask

"""When a sampled response ends: its EOS ids and its stop strings.

Public: eos_ids(models, eos_token_id) -> sorted EOS ids; StopChecker(tokenizer, stop_strings)
with .cut(resp, n_old) -> the response length once a stop string completed, or None;
resolve_stop_strings(task_stops, extra, keep_task) -> the stop strings a run samples with.
Shared by skd.core.sampling and the released-code loop of skd.benchmarks.released_loop.
"""
from __future__ import annotations

__all__ = ["eos_ids", "StopChecker", "resolve_stop_strings"]


def resolve_stop_strings(task_stops, extra, keep_task: bool = True) -> tuple[str, ...]:
    """The stop strings of a run: the task's own followed by `extra` (`skd distill --stop`), or
    `extra` alone when not `keep_task` (--no-task-stops). Empty strings and repeats are dropped,
    first occurrence kept; () means EOS and the length budget alone end a response."""
    chosen = [*(task_stops if keep_task else ()), *extra]
    return tuple(dict.fromkeys(s for s in chosen if s))


def eos_ids(models, eos_token_id) -> list[int]:
    """Sorted EOS ids: eos_token_id (one id or several) when given, else every model's own ones."""
    if eos_token_id is not None:
        ids = eos_token_id if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id]
        return sorted({int(i) for i in ids})
    found: set[int] = set()
    for m in models:
        if m is None:
            continue
        for src in (getattr(m, "generation_config", None), m.config):
            e = getattr(src, "eos_token_id", None) if src is not None else None
            if e is not None:
                found.update([e] if isinstance(e, int) else e)
    return sorted(found)


class StopChecker:
    """Ends a row once its response text contains a stop string (kept in the response)."""

    def __init__(self, tokenizer, stop_strings):
        self.tok = tokenizer
        self.stops = [s for s in stop_strings if s]
        self.window = max((len(s) for s in self.stops), default=0) + 1  # every token is >= 1 character

    def cut(self, resp: list[int], n_old: int) -> int | None:
        """Response length after the stop string completed within resp[n_old:], or None."""
        for end in range(n_old + 1, len(resp) + 1):
            text = self.tok.decode(resp[max(0, end - self.window): end], skip_special_tokens=False)
            if any(s in text for s in self.stops):
                return end
        return None

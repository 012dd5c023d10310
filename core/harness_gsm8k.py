"""GSM8K scored by lm-evaluation-harness's rules: "strict-match" and "flexible-extract".

Public: INVALID, strict_extract(output), flexible_extract(output), harness_text(text),
strict_match(output, reference), flexible_match(output, reference), harness_scores(outputs, references).

Published GSM8K numbers mostly come from EleutherAI's lm-evaluation-harness, task `gsm8k`
(lm_eval/tasks/gsm8k/gsm8k.yaml, task version 3.0). Its rules, re-implemented here in our own code
from that task definition, lm_eval/filters/extraction.py (RegexFilter) and lm_eval/api/metrics.py
(exact_match_hf_evaluate):

- the answer of an output ("filter"): strict-match takes the first match of `#### (-?[0-9.,]+)`,
  flexible-extract the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (the first non-empty group of it);
  the match is stripped of surrounding whitespace; no match gives the placeholder "[invalid]";
- the target is the dataset's whole answer field (the worked solution);
- both sides then lose, in this order, every ",", every "$", everything up to and including the last
  "#### ", and one "." at the end; both are lower-cased (ignore_case: true; ignore_punctuation: false);
- an output is right when the two strings are then equal: no number parsing, so "5.00" is not "5".

The metric is exact string match on what is left; this module does not read numbers at all (skd's own
number-aware accuracy is skd.core.metrics / Task.score).
"""
from __future__ import annotations

import re
from typing import Sequence

from skd.core.errors import SkdError

INVALID = "[invalid]"  # what the harness's regex filter returns when nothing matches

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# regexes_to_ignore of the task's exact_match, applied in this order to prediction and target alike
_IGNORED = tuple(re.compile(p) for p in (r",", r"\$", r"(?s).*#### ", r"\.$"))


def _pick(match: str | tuple[str, ...]) -> str:
    """A findall item as the harness's RegexFilter reads it: the first non-empty group, stripped."""
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def strict_extract(output: str) -> str:
    """The strict-match answer of `output`: the first `#### <number>` (the number only), else INVALID."""
    found = _STRICT.findall(output if isinstance(output, str) else "")
    return _pick(found[0]) if found else INVALID


def flexible_extract(output: str) -> str:
    """The flexible-extract answer of `output`: its last number-like run, else INVALID."""
    found = _FLEXIBLE.findall(output if isinstance(output, str) else "")
    return _pick(found[-1]) if found else INVALID


def harness_text(text: str) -> str:
    """`text` after the task's regexes_to_ignore and lower-casing: what exact match compares.

    A GSM8K solution becomes its final answer without commas or "$" ("...\\n#### 1,000" -> "1000")."""
    for pattern in _IGNORED:
        text = pattern.sub("", text)
    return text.lower()


def strict_match(output: str, reference: str) -> bool:
    """Whether `output` is right under strict-match. `reference`: the GSM8K answer field (a final
    answer alone works too: the regexes leave it as it is)."""
    return harness_text(strict_extract(output)) == harness_text(reference)


def flexible_match(output: str, reference: str) -> bool:
    """Whether `output` is right under flexible-extract (see strict_match for `reference`)."""
    return harness_text(flexible_extract(output)) == harness_text(reference)


def harness_scores(outputs: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"strict_match", "flexible_extract"}: the share of `outputs` right under each rule, as the
    harness's exact_match reports them (0..1)."""
    n = len(outputs)
    if n == 0 or n != len(references):
        raise SkdError(f"{n} outputs but {len(references)} references", "pass one reference per output (at least one)")
    return {"strict_match": sum(map(strict_match, outputs, references)) / n,
            "flexible_extract": sum(map(flexible_match, outputs, references)) / n}

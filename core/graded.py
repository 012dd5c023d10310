"""Graded measures beside exact match: partial credit for the worked lines of an `arith` answer and
teacher-relative scores of a student's own outputs (any task).

Public: arith_partial_credit(output) -> per-output counts and score, arith_graded(outputs) ->
corpus means, teacher_relative(teacher, prompt_ids, response_ids, pad_id=...) -> the teacher's
mean log-probability of, and top-1 agreement with, the response tokens.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

# One worked line in each of the formats core/arith.py writes (spaces around the operator and "="
# are tolerated in plain lines; a model copying GSM8K's "4 * 12 = 48" style is still read).
_PLAIN = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(-?\d+)")
_ANNOTATED = re.compile(r"(\d+)([-+*/])(\d+)=<<([^<>]*)>>(-?\d+)")
_COLUMN_HEAD = re.compile(r"(\d+)([-+*/])(\d+):(.*)")
_RESULT_TOKEN = re.compile(r"=(-?\d+)")
# One column of a column-worked line, per operator: digits, carry/borrow in, value(s).
_COLUMN = {
    "+": re.compile(r"(\d+)\+(\d+)\+(\d+)=(\d+)"),                 # x+y+c=s
    "*": re.compile(r"(\d+)\*(\d+)=(\d+)\+(\d+)=(\d+)"),           # x*k=p+c=s
    "-": re.compile(r"(\d+)-(\d+)-(\d+)=(-?\d+)(?:\+10=(\d+))?"),  # x-y-c=d or x-y-c=d+10=v
}
_FINAL = "####"


def _value(a: int, op: str, b: int) -> int | None:
    """The exact integer a op b, or None (division by zero or with a remainder)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b if b != 0 and a % b == 0 else None


def _digits(n: int) -> list[int]:
    """Decimal digits of n >= 0, units first."""
    return [int(c) for c in reversed(str(n))]


def _column_plan(a: int, op: str, b: int) -> list[tuple[int, int, int]] | None:
    """The right (top digit, bottom digit, carry in) of every column of a op b, units first, the way
    core/arith.py works it, or None when the operation has no column form (division, a product
    without a one-digit factor, a - b with a < b)."""
    if op == "*":
        if b <= 9:
            big, k = a, b
        elif a <= 9:
            big, k = b, a
        else:
            return None
        plan, carry = [], 0
        for d in _digits(big):
            plan.append((d, k, carry))
            carry = (d * k + carry) // 10
        return plan
    if op == "/" or (op == "-" and a < b):
        return None
    da, db = _digits(a), _digits(b)
    width = max(len(da), len(db))
    da, db = da + [0] * (width - len(da)), db + [0] * (width - len(db))
    plan, carry = [], 0
    for x, y in zip(da, db):
        plan.append((x, y, carry))
        carry = (x + y + carry) // 10 if op == "+" else int(x - y - carry < 0)
    return plan


def _check_column(token: str, op: str, expected: tuple[int, int, int] | None,
                  carry_in: int) -> tuple[bool, int | None]:
    """(right?, carry out implied by the column's own written inputs) for one column token.
    Right: it parses in the form of `op`, its digits are `expected`'s, its carry in is `carry_in`
    (the carry the previous column's own inputs imply) and its arithmetic holds on what it wrote.
    The carry out is None when the token does not parse."""
    m = _COLUMN[op].fullmatch(token) if op in _COLUMN else None
    if m is None:
        return False, None
    x, y = int(m.group(1)), int(m.group(2))
    if op == "+":
        c, total = int(m.group(3)), x + y + int(m.group(3))
        sums_hold = int(m.group(4)) == total
        carry_out = total // 10
    elif op == "*":
        product, c, total = int(m.group(3)), int(m.group(4)), int(m.group(5))
        sums_hold = product == x * y and total == x * y + c
        carry_out = (x * y + c) // 10
    else:
        c, written, plus_ten = int(m.group(3)), int(m.group(4)), m.group(5)
        diff = x - y - c
        if diff < 0:  # a borrow: "-7+10=3" must be written out
            sums_hold = written == diff and plus_ten is not None and int(plus_ten) == diff + 10
        else:
            sums_hold = written == diff and plus_ten is None
        carry_out = int(diff < 0)
    right = expected is not None and (x, y) == expected[:2] and c == carry_in and sums_hold
    return right, carry_out


def _read_line(text: str) -> dict:
    """One worked line -> {"steps", "right" (steps right), "operands" (a, op, b) or None,
    "result" (the shown result) or None}. Unparseable: one step, none right."""
    if m := _ANNOTATED.fullmatch(text):
        a, op, b, note, shown = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4), int(m.group(5))
        value = _value(a, op, b)
        inner = _PLAIN.fullmatch(note)
        note_right = (inner is not None and value is not None
                      and (int(inner.group(1)), inner.group(2), int(inner.group(3))) == (a, op, b)
                      and int(inner.group(4)) == value)
        return {"steps": 2, "right": int(note_right) + int(shown == value),
                "operands": (a, op, b), "result": shown}
    if m := _PLAIN.fullmatch(text):
        a, op, b, shown = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return {"steps": 1, "right": int(shown == _value(a, op, b)), "operands": (a, op, b),
                "result": shown}
    if m := _COLUMN_HEAD.fullmatch(text):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        tokens = m.group(4).split()
        last = _RESULT_TOKEN.fullmatch(tokens[-1]) if tokens else None
        shown = int(last.group(1)) if last else None
        columns = tokens[:-1] if last else tokens
        plan = _column_plan(a, op, b)
        width = len(plan) if plan is not None else 0
        right, carry = 0, 0
        for i, token in enumerate(columns):
            expected = plan[i] if i < width else None
            ok, carry_out = _check_column(token, op, expected, carry)
            right += ok
            # An unreadable column passes on the right carry, so one error is counted once.
            next_right = plan[i + 1][2] if i + 1 < width else 0
            carry = carry_out if carry_out is not None else next_right
        value = _value(a, op, b)
        right += int(shown is not None and shown == value)
        return {"steps": max(width, len(columns)) + 1, "right": right, "operands": (a, op, b),
                "result": shown}
    return {"steps": 1, "right": 0, "operands": None, "result": None}


def _chained(lines: list[dict], i: int) -> bool:
    """Line i (>= 1) starts from line i-1's result: one of its operands is that result, or it is a
    side product (a*b, "k bags of m", from the question) whose result the next line combines with
    line i-1's result."""
    prev, line = lines[i - 1]["result"], lines[i]
    if prev is None or line["operands"] is None:
        return False
    a, op, b = line["operands"]
    if prev in (a, b):
        return True
    if op != "*" or line["result"] is None or i + 1 >= len(lines) or lines[i + 1]["operands"] is None:
        return False
    na, _, nb = lines[i + 1]["operands"]
    return sorted((na, nb)) == sorted((prev, line["result"]))


def arith_partial_credit(output: str) -> dict[str, Any]:
    """Partial credit for one `arith` response, re-derived line by line from each line's own inputs
    (never compared with a reference answer).

    Read: the response up to its last line starting with "####" (text after it is not scored;
    exact match reads that line too); its final answer is the first integer after that "####".
    Every other non-blank line before it is a worked line. Steps counted:
      * plain line "a op b=r" (op in + - * /): 1 step, right iff r == a op b (division: exact).
      * annotated line "a op b=<<a op b=r1>>r2": 2 steps, the note (it repeats the line's
        expression and r1 == a op b) and r2 == a op b.
      * column line "a op b: col col ... =r": one step per column plus one for "=r" (r == a op b).
        A column ("x+y+c=s", "x*k=p+c=s", "x-y-c=d" or "x-y-c=d+10=v") is right iff it has the
        line's own digits at that place (units first, the shorter operand padded with 0; for a
        product the wider factor's digit and the one-digit factor), its carry/borrow in equals the
        one the previous column's own written inputs imply (0 for the first), and its arithmetic
        holds on what it wrote (a borrow must be written "d+10=v"). Missing or extra columns are
        wrong steps; a column form for an operation without one (division, wide products) is wrong.
      * any other worked line (including an earlier "####" line): 1 step, wrong.
      * the final answer: 1 step, right iff "####" has a number equal to the last worked line's
        shown result (wrong if there is no "####" line or no worked line).
    score = steps_right / steps, so an empty output (only the missing final step) scores 0.
    Lines right: worked lines whose steps are all right. Chaining (reported apart from the score):
    each worked line after the first is checked to start from the previous line's result (an
    operand equals it, or it is a side product "k*m" whose result the next line adds to it);
    chain_share = chained / chain_checked (None when fewer than two lines were worked).

    Returns {"score", "steps", "steps_right", "lines", "lines_right", "chain_checked", "chained",
    "chain_share", "final_right"}."""
    rows = [row.strip() for row in output.split("\n")]
    finals = [i for i, row in enumerate(rows) if row.startswith(_FINAL)]
    end = finals[-1] if finals else len(rows)
    lines = [_read_line(row) for row in rows[:end] if row]
    final = None
    if finals:
        number = re.search(r"-?\d+", rows[end][len(_FINAL):])
        final = int(number.group()) if number else None
    final_right = bool(lines) and final is not None and final == lines[-1]["result"]
    steps = sum(line["steps"] for line in lines) + 1
    steps_right = sum(line["right"] for line in lines) + int(final_right)
    chain_checked = max(len(lines) - 1, 0)
    chained = sum(_chained(lines, i) for i in range(1, len(lines)))
    return {
        "score": steps_right / steps,
        "steps": steps,
        "steps_right": steps_right,
        "lines": len(lines),
        "lines_right": sum(line["right"] == line["steps"] for line in lines),
        "chain_checked": chain_checked,
        "chained": chained,
        "chain_share": chained / chain_checked if chain_checked else None,
        "final_right": final_right,
    }


def arith_graded(outputs: Sequence[str]) -> dict[str, Any]:
    """Corpus-level graded scores of `arith` responses (see arith_partial_credit):
    partial_credit - mean per-output score; step_accuracy / line_accuracy - steps / worked lines
    right over all outputs; chain_share - chained / chain_checked over all outputs (None when no
    output worked two lines); final_consistent - share of outputs whose "####" equals their last
    line's result; outputs - how many were scored."""
    if isinstance(outputs, str) or len(outputs) == 0:
        raise ValueError("arith_graded needs a non-empty sequence of output strings")
    each = [arith_partial_credit(text) for text in outputs]
    n = len(each)
    lines = sum(r["lines"] for r in each)
    checked = sum(r["chain_checked"] for r in each)
    return {
        "partial_credit": sum(r["score"] for r in each) / n,
        "step_accuracy": sum(r["steps_right"] for r in each) / sum(r["steps"] for r in each),
        "line_accuracy": sum(r["lines_right"] for r in each) / lines if lines else 0.0,
        "chain_share": sum(r["chained"] for r in each) / checked if checked else None,
        "final_consistent": sum(r["final_right"] for r in each) / n,
        "outputs": n,
    }


def teacher_relative(teacher: Any, prompt_ids: Sequence[Sequence[int]],
                     response_ids: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 8,
                     vocab_size: int | None = None) -> dict[str, Any]:
    """How the teacher judges a student's own responses (e.g. greedy outputs on held-out prompts):
    each prompt + response row goes through the teacher (batched, right-padded, attention mask,
    no grad) and every response token is scored under the teacher's next-token distribution given
    the same prefix. Works with any causal LM whose output has `.logits` (transformers models).

    prompt_ids / response_ids: unpadded id lists, one pair per row (prompts non-empty); every id of
    a response is scored, so an EOS the student emitted counts when it is in the list. vocab_size:
    cut the teacher's logits to the tokenizer's vocabulary (embedding padding columns are never
    part of the distribution). Returns {"teacher_logprob_per_token": mean log p_teacher(token),
    "teacher_top1_agreement": share of tokens equal to the teacher's argmax, "tokens": n}, means
    over all response tokens of all rows (None for both when there are no response tokens)."""
    import torch

    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"teacher_relative: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    if batch_size < 1:
        raise ValueError(f"teacher_relative: batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("teacher_relative: every prompt needs at least one token (the first "
                         "response token is scored from the prompt's last position)")
    device = next(teacher.parameters()).device
    rows = [(list(p), list(r)) for p, r in zip(prompt_ids, response_ids) if len(r) > 0]
    # Similar lengths share a batch (less padding); the sums do not depend on the order.
    rows.sort(key=lambda row: len(row[0]) + len(row[1]))
    logprob_sum, agree, tokens = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            width = max(len(p) + len(r) for p, r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (p, r) in enumerate(batch):
                ids[j, :len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
                mask[j, :len(p) + len(r)] = 1
            logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            if vocab_size is not None:
                if logits.shape[-1] < vocab_size:
                    raise ValueError(f"teacher_relative: the teacher's logits have "
                                     f"{logits.shape[-1]} columns, fewer than vocab_size {vocab_size}")
                logits = logits[..., :vocab_size]
            if max(max(r) for _, r in batch) >= logits.shape[-1]:
                raise ValueError(f"teacher_relative: a response id is outside the teacher's "
                                 f"{logits.shape[-1]} logit columns")
            for j, (p, r) in enumerate(batch):
                # Position t predicts token t+1: the response's tokens come from len(p)-1 on.
                row = logits[j, len(p) - 1:len(p) + len(r) - 1]
                row = row.double() if row.dtype == torch.float64 else row.float()
                target = torch.tensor(r, dtype=torch.long, device=row.device)
                logprobs = torch.log_softmax(row, dim=-1)
                logprob_sum += logprobs.gather(-1, target[:, None]).sum().item()
                agree += int((row.argmax(dim=-1) == target).sum().item())
                tokens += len(r)
    return {
        "teacher_logprob_per_token": logprob_sum / tokens if tokens else None,
        "teacher_top1_agreement": agree / tokens if tokens else None,
        "tokens": tokens,
    }

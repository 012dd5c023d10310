"""Answer metrics: final-answer extraction and lenient math equality (the accuracy tasks).

Public: extract_gsm8k_answer(text, fallback_last_number=False), extract_boxed(text),
normalize_number(text), numbers_equal(a, b, rel_tol), math_equal(pred, ref, ...),
exact_equal(pred, ref), answers_equal(pred, ref, grader), GRADERS, MINUS_SIGNS.

Two graders compare a final answer with a reference (GRADERS): "exact" -- the same value, numbers
compared exactly ("5.00" is 5, 41.996 is not 42) -- and "paper", the paper's lenient grader
(math_equal: numbers within a relative 1e-4, and ref/100 or ref*100 count too). Every minus sign is
read as one (MINUS_SIGNS), by both.

The text metrics (ROUGE / BLEU / chrF / COMET) are in skd.core.text_metrics. sympy is imported
lazily, and only for answers the plain number and fraction rules cannot decide.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import re
import signal
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable


# ---------------------------------------------------------------------------------------------
# Numbers and answer extraction (CONTRACT.md §6: "the number after ####", boxed answers)
# ---------------------------------------------------------------------------------------------

# Characters that stand for a minus sign in answers besides ASCII "-": U+2212 MINUS SIGN (what
# typeset math and many tokenizers' detokenised text use), U+2012 FIGURE DASH, U+2013 EN DASH (the
# typographic stand-in for minus), U+2010 HYPHEN, U+2011 NON-BREAKING HYPHEN, U+FE63 SMALL
# HYPHEN-MINUS and U+FF0D FULLWIDTH HYPHEN-MINUS (Unicode's hyphen-minus look-alikes; Unicode
# Standard, ch. 6.2 "Dashes"). The em dash and horizontal bar are punctuation, not signs: left alone.
MINUS_SIGNS = "\u2212\u2012\u2013\u2010\u2011\ufe63\uff0d"
_ASCII_MINUS = str.maketrans({c: "-" for c in MINUS_SIGNS})

# A number as written in answers: optional sign and "$", digits with optional thousands commas,
# optional decimals, optional "%"; or a bare ".5". Minus signs are made ASCII before matching.
_NUMBER_RE = re.compile(r"[-+]?\$?\s?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)%?")
_PLAIN_NUMBER_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")  # unsigned: the sign is split off first
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_number(text: Any) -> str | None:
    """Canonical decimal string of a number as answers write it, or None if `text` is not one.

    Reads every minus sign of MINUS_SIGNS as "-"; drops "$", "%", thousands commas ("1,000" and LaTeX
    "1{,}000"), a trailing period, a leading "+", leading zeros and trailing fractional zeros:
    "$1,200.50" -> "1200.5", "18." -> "18", "5.0" -> "5", "-0" -> "0", "\u22123" -> "-3". Ints and
    floats are accepted too (51.0 -> "51").
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int):
        return str(text)
    if isinstance(text, float):
        if not math.isfinite(text):
            return None
        text = format(Decimal(repr(text)), "f")  # 1e-05 -> "0.00001": keep the string plain
    s = str(text).strip().translate(_ASCII_MINUS).replace("{,}", "").replace("\\$", "$").replace("\\%", "%")
    s = s.rstrip(".,").strip()
    if s.endswith("%"):
        s = s[:-1].strip()
    sign = ""
    if s[:1] in "+-":
        sign, s = ("-" if s[0] == "-" else ""), s[1:].strip()
    if s.startswith("$"):
        s = s[1:].strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if not _PLAIN_NUMBER_RE.fullmatch(s):
        return None
    whole, _, frac = s.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return "0" if out == "0" else sign + out


def extract_gsm8k_answer(text: str | None, fallback_last_number: bool = False) -> str | None:
    """The number after the LAST "####" in `text` (GSM8K's final-answer marker), normalised.

    Only the rest of that line is searched, and its first number is taken ("#### $1,000 dollars" ->
    "1000"). Returns None when there is no "####" followed by a number, unless
    `fallback_last_number` is set: then the last number anywhere in the text is used.
    """
    if not text:
        return None
    text = text.translate(_ASCII_MINUS)  # "#### \u22125" is -5, not 5
    if "####" in text:
        tail = text.rsplit("####", 1)[1].split("\n", 1)[0]
        match = _NUMBER_RE.search(tail)
        if match:
            return normalize_number(match.group(0))
    if fallback_last_number:
        for match in reversed(list(_NUMBER_RE.finditer(text))):
            value = normalize_number(match.group(0))
            if value is not None:
                return value
    return None


def extract_boxed(text: str | None) -> str | None:
    r"""Contents of the LAST \boxed{...} (or \fbox{...}) in `text`, nested braces kept.

    "\boxed{\frac{1}{2}}" -> "\frac{1}{2}". The brace-less form "\boxed 5" gives "5". Returns None
    when there is no box or its braces never close.
    """
    if not text:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5):]
    if rest.startswith(" "):  # "\boxed 5$": one token, no braces
        token = rest.strip().split("$", 1)[0].split()
        return token[0] if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip()
    return None


def numbers_equal(a: Any, b: Any, rel_tol: float = 1e-4) -> bool:
    """True when `a` and `b` are both numbers (strings as answers write them, or ints/floats) that
    agree within the relative tolerance `rel_tol` (exactly, for 0)."""
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    return math.isclose(float(na), float(nb), rel_tol=rel_tol, abs_tol=0.0)


# ---------------------------------------------------------------------------------------------
# Lenient math equality (the paper grades GSM8K and the math sets with the released grader's
# `math_equal`: string match, numbers within 1e-4 incl. percentage forms, then symbolic equality).
# Written anew here, with guarded parsing and a hard time limit.
# ---------------------------------------------------------------------------------------------

_MAX_ANSWER_CHARS = 300  # longer "answers" are not final answers; refuse before any parsing
_MAX_EXPONENT = 256  # refuse 9**9**9-style inputs instead of computing them
_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "^\\circ",
               "^{\\circ}", "\\circ", "\\%", "%", "\\$", "$")
_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\{([^{}]*)\}")
_LEADING_ASSIGNMENT = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_ALLOWED_EXPR = re.compile(r"[0-9a-zA-Z+\-*/().\s]*")
_ALLOWED_NAMES = {"sqrt", "pi"}


class _Timeout(Exception):
    pass


def _normalize_answer(text: str) -> str:
    """Strip presentation from a final answer (minus signs made ASCII): $, \\left/\\right, spacing commands, degrees,
    percent signs, \\text{} wrappers, a leading "x =", a trailing period, outer spaces."""
    s = text.strip().translate(_ASCII_MINUS)
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    for token in _LATEX_DROP:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", "")
    s = _LEADING_ASSIGNMENT.sub("", s.strip())
    return s.strip().rstrip(".").strip()


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside (), [] or {}."""
    parts, depth, current = [], 0, []
    for char in s:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _braced(s: str, i: int) -> tuple[str, int] | None:
    """The {...} group starting at s[i] and the index after it; a bare char/digit also counts
    (LaTeX's \\frac12)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] != "{":
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return None


def _latex_to_expr(s: str) -> str | None:
    """A small LaTeX subset (\\frac, \\sqrt, \\pi, \\cdot, \\times, \\div, ^, braces) as a Python
    expression string, or None if anything else remains. Input is already normalised."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            num = _braced(s, i + 5)
            den = _braced(s, num[1]) if num else None
            if den is None:
                return None
            a, b = _latex_to_expr(num[0]), _latex_to_expr(den[0])
            if a is None or b is None:
                return None
            out.append(f"(({a})/({b}))")
            i = den[1]
        elif s.startswith("\\sqrt", i):
            j, root = i + 5, "2"
            if j < len(s) and s[j] == "[":
                close = s.find("]", j)
                if close < 0:
                    return None
                root, j = s[j + 1:close], close + 1
            arg = _braced(s, j)
            inner = _latex_to_expr(arg[0]) if arg else None
            root_expr = _latex_to_expr(root)
            if inner is None or root_expr is None:
                return None
            out.append(f"sqrt({inner})" if root == "2" else f"(({inner})**(1/({root_expr})))")
            i = arg[1]
        elif s.startswith("\\pi", i):
            out.append("pi")
            i += 3
        elif s.startswith("\\cdot", i) or s.startswith("\\times", i):
            out.append("*")
            i += 5 if s.startswith("\\cdot", i) else 6
        elif s.startswith("\\div", i):
            out.append("/")
            i += 4
        elif s[i] == "\\":
            return None  # unsupported command
        elif s[i] == "^":
            out.append("**")
            i += 1
        elif s[i] in "{}":
            out.append("(" if s[i] == "{" else ")")
            i += 1
        else:
            out.append(s[i])
            i += 1
    expr = "".join(out)
    if not _ALLOWED_EXPR.fullmatch(expr):
        return None
    names = set(re.findall(r"[a-zA-Z]{2,}", expr))
    if not names <= _ALLOWED_NAMES:
        return None
    return expr


def _eval_rational(expr: str) -> Fraction | None:
    """Exact value of an expression built from numbers with + - * / and small integer powers, or
    None when it uses anything else (names, roots, huge exponents, division by zero)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            inner = value(node.operand)
            return inner if isinstance(node.op, ast.UAdd) else -inner
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div):
                return left / right
            if isinstance(node.op, ast.Pow) and right.denominator == 1 \
                    and abs(right.numerator) <= _MAX_EXPONENT:
                return left ** int(right)
        raise ValueError("not a rational expression")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _run_with_time_limit(fn: Callable[[], Any], timeout_s: float) -> Any:
    """fn() or _Timeout after `timeout_s`. On the main thread (and with no other real-time timer
    armed) SIGALRM interrupts the work; elsewhere fn runs in a daemon thread that is abandoned if
    late (the caller never waits longer than timeout_s)."""
    main = threading.current_thread() is threading.main_thread()
    if main and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
        def on_alarm(signum, frame):
            raise _Timeout()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # surfaced to the caller below
            box["error"] = err

    worker = threading.Thread(target=target, name="skd-math-equal", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Timeout()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _sympy_equal(a: str, b: str, rel_tol: float, timeout_s: float) -> bool:
    """Symbolic equality of two guarded expression strings with sympy, under a time limit.
    False when sympy is missing, parsing fails, or time runs out."""
    if importlib.util.find_spec("sympy") is None:
        return False

    def check() -> bool:
        import sympy
        from sympy.parsing.sympy_parser import (
            implicit_multiplication_application, parse_expr, standard_transformations)

        transformations = standard_transformations + (implicit_multiplication_application,)
        names = {"sqrt": sympy.sqrt, "pi": sympy.pi}
        # evaluate=False: nothing is computed before the exponent guard below. A huge integer
        # power runs inside one C call that no signal can interrupt, so refuse it up front.
        x = parse_expr(a, local_dict=names, transformations=transformations, evaluate=False)
        y = parse_expr(b, local_dict=names, transformations=transformations, evaluate=False)
        for expr in (x, y):
            for node in sympy.postorder_traversal(expr):
                if isinstance(node, sympy.Pow) and node.exp.is_number \
                        and abs(complex(sympy.N(node.exp, 15))) > _MAX_EXPONENT:
                    return False
        if sympy.simplify(x - y) == 0:
            return True
        if x.is_number and y.is_number:
            xv, yv = complex(sympy.N(x)), complex(sympy.N(y))
            return abs(xv - yv) <= rel_tol * max(abs(xv), abs(yv))
        return False

    try:
        return bool(_run_with_time_limit(check, timeout_s))
    except _Timeout:
        return False
    except Exception:  # sympy raises many parse/type errors on model output: not equal
        return False


def math_equal(prediction: Any, reference: Any, *, rel_tol: float = 1e-4,
               include_percentage: bool = True, timeout_s: float = 5.0) -> bool:
    r"""Lenient equality of a predicted final answer and a reference, never hanging.

    In order: (1) equal after normalisation (spacing, $, \left/\right, \text{}, "x =", \dfrac);
    (2) both plain numbers: equal within `rel_tol`, also against reference/100 and reference*100
    when `include_percentage` (as the paper's grader); (3) tuples/intervals/lists with the same
    brackets: element-wise; (4) exact rational value (\frac{1}{2} == 0.5 == 1/2 == 2/4);
    (5) sympy symbolic equality (\sqrt{8} == 2\sqrt{2}) within `timeout_s` seconds, when sympy
    is installed. None on either side is never equal.
    """
    if prediction is None or reference is None:
        return False
    p, r = _normalize_answer(str(prediction)), _normalize_answer(str(reference))
    if not p or not r or len(p) > _MAX_ANSWER_CHARS or len(r) > _MAX_ANSWER_CHARS:
        return False
    if p.lower() == r.lower() or p.replace(" ", "") == r.replace(" ", ""):
        return True
    pn, rn = normalize_number(p), normalize_number(r)
    if pn is not None and rn is not None:
        targets = [float(rn)] + ([float(rn) / 100, float(rn) * 100] if include_percentage else [])
        return any(math.isclose(float(pn), t, rel_tol=rel_tol, abs_tol=0.0) for t in targets)
    p_inner, r_inner = p, r
    if p[:1] in "([" and p[-1:] in ")]" and r[:1] in "([" and r[-1:] in ")]":
        if p[0] != r[0] or p[-1] != r[-1]:
            return False  # (a, b] is not [a, b]
        p_inner, r_inner = p[1:-1], r[1:-1]
    p_parts, r_parts = _split_top_level(p_inner), _split_top_level(r_inner)
    if len(p_parts) > 1 or len(r_parts) > 1:  # tuples, intervals, lists: element by element
        return len(p_parts) == len(r_parts) and all(
            math_equal(x, y, rel_tol=rel_tol, include_percentage=False, timeout_s=timeout_s)
            for x, y in zip(p_parts, r_parts))
    pe, re_ = _latex_to_expr(p), _latex_to_expr(r)
    if pe is None or re_ is None:
        return False
    pq, rq = _eval_rational(pe), _eval_rational(re_)
    if pq is not None and rq is not None:
        return pq == rq or math.isclose(float(pq), float(rq), rel_tol=rel_tol, abs_tol=0.0)
    return _sympy_equal(pe, re_, rel_tol, timeout_s)


# ---------------------------------------------------------------------------------------------
# Graders: which equality an accuracy task counts as right
# ---------------------------------------------------------------------------------------------

GRADERS = ("exact", "paper")  # exact: the same value; paper: the paper's lenient math_equal


def exact_equal(prediction: Any, reference: Any) -> bool:
    r"""Whether a predicted final answer has exactly the value of the reference.

    Two plain numbers must be the same decimal after normalize_number ("$4,200" == "4200",
    "5.00" == "5", "41.996" != "42", "0.42" != "42"). Other answers go through math_equal with no
    tolerance and no percentage forms, so equal forms still match (rac{1}{2} == 0.5, tuples element
    by element, \sqrt{8} == 2\sqrt{2}).
    """
    if prediction is None or reference is None:
        return False
    pn, rn = normalize_number(prediction), normalize_number(reference)
    if pn is not None and rn is not None:
        return pn == rn
    return math_equal(prediction, reference, rel_tol=0.0, include_percentage=False)


def answers_equal(prediction: Any, reference: Any, grader: str) -> bool:
    """Whether `prediction` counts as `reference` under `grader` (one of GRADERS)."""
    if grader == "exact":
        return exact_equal(prediction, reference)
    if grader == "paper":
        return math_equal(prediction, reference)
    raise ValueError(f"unknown grader {grader!r}; graders: {', '.join(GRADERS)}")

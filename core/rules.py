"""The sampling rule at one position (CONTRACT.md §2): token choice and draft verification rules.

Public: process_logits(logits, temperature, top_k, top_p); sample_tokens(logits, u, ...);
teacher_settings(cfg), student_settings(cfg, drafting) (each model's sampling arguments);
SkdRule (SKD's top-K test and teacher replacement); SpeculativeRule (speculative decoding's);
acceptance_estimate(accepted, rejected) -> the per-token acceptance `--gamma auto` plans with;
adaptive_gamma(acceptance, cost_ratio, gamma_max, bonus) -> the draft length of `--gamma auto`;
teacher_price(cost_ratio, width) -> a teacher pass's price in student forwards; student_price(cost_ratio,
width) -> a student pass's; round_tokens(a, n) -> a round's expected tokens;
drafting_pays(...) -> whether any draft beats the teacher alone (speculative decoding's skipped rounds);
mismatch_estimate(mismatched, kept) and plan_round(...) -> which model leads the next SKD round, and for how long;
staging_pays(acceptance, rows, width, fixed_tokens) and verify_fixed_tokens(params, device_type) -> whether a
verification runs its first position alone first.
A rule has accept(t_logits, draft, draft_len, q, u) -> kept prefix and token(...) -> the teacher's token.
"""
from __future__ import annotations

import torch

from skd.core import ops
from skd.core.config import SampleConfig

__all__ = ["process_logits", "sample_tokens", "teacher_settings", "student_settings", "SkdRule",
           "SpeculativeRule", "acceptance_estimate", "adaptive_gamma", "round_tokens", "teacher_price",
           "student_price", "mismatch_estimate", "plan_round", "drafting_pays", "staging_pays",
           "verify_fixed_tokens", "STAGED_FIXED_TOKENS_CPU", "STAGED_MIN_PARAMS"]


def teacher_settings(cfg: SampleConfig) -> dict:
    """How the teacher samples its tokens (top-k only in code semantics, CONTRACT.md §2)."""
    return dict(temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                top_k=cfg.teacher_top_k if cfg.semantics == "code" else 0)


def student_settings(cfg: SampleConfig, drafting: bool) -> dict:
    """How the student samples: its own settings, or the teacher's when drafting in code semantics."""
    if drafting and cfg.semantics == "code":  # the released code drafts with the teacher's generation settings
        return dict(temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p, top_k=cfg.teacher_top_k)
    return dict(temperature=cfg.student_temperature, top_p=cfg.student_top_p, top_k=0)


# --------------------------------------------------------------------------- token choice

def process_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the Hugging Face warper order). Filtered -> -inf. fp32."""
    x = logits.float()
    if temperature > 0 and temperature != 1.0:
        x = x / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = probs.cumsum(-1) - probs          # mass strictly before each token
        drop = before >= top_p                     # the most likely token is always kept
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return x


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, *, temperature: float, top_p: float = 1.0,
                  top_k: int = 0) -> torch.Tensor:
    """One token per row from logits[A, V] by inverse CDF on the uniforms u[A]; temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(process_logits(logits, temperature, top_k, top_p), dim=-1)
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.device, cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    # right=True: the first index whose cumulative mass exceeds the target, never a zero-mass token.
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


# --------------------------------------------------------------------------- draft length

def acceptance_estimate(accepted: int, rejected: int) -> float:
    """The per-token acceptance probability a of the model adaptive_gamma assumes, from the rounds so far.

    Under that model a round's drafted tokens are tested in order until the first rejection, so the
    tokens drafted after a rejection are never tested: each round contributes its kept prefix (accepted
    tokens) and at most one rejection, and the maximum-likelihood estimate of a is accepted / (accepted
    + rejected). (Accepted / drafted, the acceptance rate reported to users, counts the untested
    tokens too and reads low: at a = 0.8 and 5-token drafts it is ~0.54.) Laplace-smoothed, so the
    first round, with nothing seen, drafts for a coin flip."""
    return (accepted + 1) / (accepted + rejected + 2)


def round_tokens(acceptance: float, n: int) -> float:
    """Expected tokens per row of a round whose first n - 1 drafted tokens are tested and whose n-th token
    comes at the latest (n = g without the bonus token, g + 1 with it), each drafted token kept with
    probability a until the first rejection (Leviathan et al. 2023, section 3): (1 - a^n) / (1 - a)."""
    a = min(max(float(acceptance), 0.0), 1.0)
    return float(n) if a >= 1.0 else (1.0 - a ** n) / (1.0 - a)


def teacher_price(cost_ratio, width: int) -> float:
    """The price of a teacher pass over `width` positions, in one-position student forwards: cost_ratio
    itself when it is one number (a pass costs the same at every width, as on a GPU at small widths),
    else entry width - 1 of the sequence (the last entry for longer passes)."""
    if isinstance(cost_ratio, (int, float)):
        return float(cost_ratio)
    return float(cost_ratio[min(width, len(cost_ratio)) - 1])


def adaptive_gamma(acceptance: float, cost_ratio, gamma_max: int, bonus: bool) -> int:
    """The draft length that maximises expected tokens per unit of cost for one round.

    With each drafted token kept with probability a (independently, the usual speculative-decoding
    model, Leviathan et al. 2023, section 3), a round that drafts g tokens yields on average
    (1 - a^g) / (1 - a) tokens (the kept prefix, then the teacher's token at the first rejection),
    or (1 - a^(g+1)) / (1 - a) when a full acceptance also keeps the teacher's bonus token; it costs
    g student forwards plus one teacher pass over g positions (g + 1 with the bonus), i.e. g +
    teacher_price(cost_ratio, width) student-forward units. cost_ratio: one number, or prices per
    pass width (teacher_price). The smallest g in 1..gamma_max with the best ratio is returned (ties
    go to the shorter draft)."""
    return _best_draft(acceptance, cost_ratio, gamma_max, bonus)[0]


def _best_draft(acceptance: float, cost_ratio, gamma_max: int, bonus: bool) -> tuple[int, float]:
    """(adaptive_gamma's draft length, its expected tokens per student-forward unit of cost)."""
    best, best_rate = 1, -1.0
    for g in range(1, gamma_max + 1):
        n = g + 1 if bonus else g
        rate = round_tokens(acceptance, n) / (g + teacher_price(cost_ratio, n))   # the pass covers n positions
        if rate > best_rate * (1 + 1e-12):
            best, best_rate = g, rate
    return best, best_rate


def student_price(cost_ratio, width: int) -> float:
    """The price of a student pass over `width` positions, in one-position student forwards: 1 when
    cost_ratio is one number (a pass costs the same at every width), else the teacher's growth with
    width, teacher_price(width) / teacher_price(1): only the teacher's passes are measured, and both
    models are decoders whose few-position passes read every weight once, so their prices grow alike."""
    if isinstance(cost_ratio, (int, float)):
        return 1.0
    return teacher_price(cost_ratio, width) / teacher_price(cost_ratio, 1)


def mismatch_estimate(mismatched: float, kept: int) -> float:
    """The share m of kept student tokens that differ from the teacher's own draw at their position:
    mismatched / kept, smoothed towards m = 1 (every kept token a break, the most a teacher-led round can
    lose) while little is seen. `mismatched` counts the breaks of teacher-led rounds (each kept token
    there is compared with the teacher's draw) plus, for the tokens kept in student-led rounds, where no
    teacher token was drawn, the probability 1 - p(token) that the teacher's draw would have differed."""
    return (mismatched + 1) / (kept + 1)


def plan_round(acceptance: float, mismatch: float, cost_ratio, gamma_max: int, bonus: bool,
               teacher_led: bool) -> tuple[bool, int]:
    """(teacher leads, length) of the next SKD round: the plan with the most expected tokens per unit of cost.

    Student-led: adaptive_gamma's draft. Teacher-led (only without the bonus token, and when allowed): the
    teacher writes n tokens ahead from its own distribution, one one-position pass each (the tokens it
    would put in place of rejected proposals), the student scores them in one pass over n positions and
    proposes a token at each; a proposal inside the top-K that differs from the teacher's token is kept
    and ends the round (its later positions were written on another prefix). A position breaks with
    probability b = acceptance * mismatch, so the round yields round_tokens(1 - b, n) tokens for n
    teacher_price(1) + student_price(n). Each position's token law is SKD's either way (CONTRACT.md
    §2). Ties go to the student-led round, then to the shorter one."""
    g, sl_rate = _best_draft(acceptance, cost_ratio, gamma_max, bonus)
    if not teacher_led or bonus:
        return False, g
    keep = 1.0 - min(max(float(acceptance) * float(mismatch), 0.0), 1.0)
    best, best_rate = 0, sl_rate
    for n in range(1, gamma_max + 1):
        rate = round_tokens(keep, n) / (n * teacher_price(cost_ratio, 1) + student_price(cost_ratio, n))
        if rate > best_rate * (1 + 1e-12):
            best, best_rate = n, rate
    return (True, best) if best else (False, g)


def drafting_pays(acceptance: float, cost_ratio, gamma_max: int, bonus: bool) -> bool:
    """Whether drafting at adaptive_gamma's length yields more tokens per unit of cost than the teacher
    alone, which writes one token per one-position teacher pass (teacher_price(cost_ratio, 1)
    student-forward units), under the same model of independent acceptances (Leviathan et al. 2023,
    section 3)."""
    return _best_draft(acceptance, cost_ratio, gamma_max, bonus)[1] * teacher_price(cost_ratio, 1) > 1.0


# A pass over n row-positions costs about F + c * n (weights read once, then the products); staged
# verification (staging_pays) weighs F in units of c, the pass's "fixed tokens". Measured on the CPU
# (2-core AMD EPYC, fp32, 2 threads) with SmolLM2-135M's body over a 130-slot cache: 32 rows x 1
# position 117-137 ms, 32 x 4 312-336 ms, 32 x 5 352-382 ms, 4 x 4 74-86 ms, 1 x 4 49-56 ms, so c ~
# 1.85 ms and F ~ 45-65 ms: 25-36 row-positions. A model under STAGED_MIN_PARAMS is dominated by the
# per-call overhead of its layers (its pass costs about the same at any size a sampler makes), and
# GPU passes were not measured: there staging is left off.
STAGED_FIXED_TOKENS_CPU = 32
STAGED_MIN_PARAMS = 20_000_000


def verify_fixed_tokens(params: int, device_type: str) -> float | None:
    """The fixed cost of a teacher pass in row-positions (STAGED_FIXED_TOKENS_CPU), or None where staged
    verification is not used: GPUs, and models under STAGED_MIN_PARAMS parameters."""
    if device_type != "cpu" or params < STAGED_MIN_PARAMS:
        return None
    return float(STAGED_FIXED_TOKENS_CPU)


def staging_pays(acceptance: float, rows: int, width: int, fixed_tokens: float | None) -> bool:
    """Whether a verification over `width` positions of `rows` rows costs less in two stages: the first
    position of every row, then the other width - 1 positions of the rows whose first drafted token was
    kept (expected acceptance * rows of them, and no second pass when none was), than in one pass.

    With a pass costing F + c * (rows x positions) and F = fixed_tokens * c: one pass costs
    F + c * rows * width; two stages F + c * rows + P(any kept) * F + c * acceptance * rows * (width - 1),
    P(any kept) = 1 - (1 - a)^rows (independent rows, the acceptance model of adaptive_gamma). Staging pays
    when P(any kept) * fixed_tokens < rows * (width - 1) * (1 - acceptance). Both give the same logits at
    every tested position (the same prefixes), so the choice moves cost, not tokens."""
    if fixed_tokens is None or width < 2 or rows < 1:
        return False
    a = min(max(float(acceptance), 0.0), 1.0)
    any_kept = 1.0 - (1.0 - a) ** rows
    return any_kept * fixed_tokens < rows * (width - 1) * (1.0 - a)


# --------------------------------------------------------------------------- verification rules

class SkdRule:
    """SKD (CONTRACT.md §2, steps 3-5): keep the longest prefix inside the teacher's top-K; the teacher
    samples the token at the first rejection (and the bonus row when keep_bonus)."""

    needs_q = False
    draws_per_round = 1
    # Each position's token is the proposal if it passes the test, else an independent teacher draw, so
    # the teacher may write ahead and the student's proposals be tested afterwards (plan_round).
    teacher_may_lead = True
    # Each position's test reads that position's logits alone (sampling.accept_by_position may run them
    # one position at a time).
    tests_by_position = True

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg
        self.keep_bonus = cfg.keep_bonus
        self.teacher = teacher_settings(cfg)   # how the teacher samples its tokens

    def in_top_k(self, t_logits, tokens):
        """bool [A, D]: tokens[a, j] inside the teacher's top-K of t_logits[a, j] (the first D rows)."""
        A, D, V = t_logits.shape[0], tokens.shape[1], t_logits.shape[-1]
        test = t_logits[:, :D]
        if self.cfg.semantics == "code":  # released code: test on the processed teacher distribution
            test = process_logits(test, self.cfg.teacher_temperature, self.cfg.teacher_top_k, self.cfg.teacher_top_p)
        if test.dtype == torch.float64:  # the op takes fp32 / bf16 / fp16 (float64 = test models only)
            test = test.float()
        return ops.topk_rank_accept(test.reshape(A * D, V), tokens.reshape(-1), self.cfg.k).view(A, D)

    def accept(self, t_logits, draft, draft_len, q, u):
        """Kept prefix length per row: the drafted tokens, from the first, inside the teacher's top-K."""
        return ops.accept_prefix(self.in_top_k(t_logits, draft), draft_len)

    def token(self, t_rows, q_rows, rejected, u):
        """The teacher's token per row, sampled from its logits t_rows[A, V] with the uniforms u[A]."""
        return sample_tokens(t_rows, u, **self.teacher)


class SpeculativeRule:
    """Speculative decoding (Leviathan et al. 2023): the output follows the teacher's distribution.

    Greedy (temperature 0): accept while the draft equals the teacher's argmax; the teacher's argmax
    follows. Sampling: accept draft token i while u_i < p_i / q_i (op speculative_accept); at the
    first rejection sample from norm(max(0, p - q)); after a full acceptance, from p (bonus)."""

    draws_per_round = None  # set in __init__: D acceptance uniforms + 1 for the correction
    keep_bonus = True
    # Any round may be the teacher's alone (its output distribution does not depend on the draft), so
    # --gamma auto skips drafting where it does not pay. SKD's rule has no such rounds: its student
    # must propose every token the teacher does not replace.
    may_skip_draft = True

    def __init__(self, temperature: float, top_p: float, gamma: int):
        """gamma: the longest draft a round may have (with --gamma auto, the upper bound gamma_max)."""
        self.temperature, self.top_p = temperature, top_p
        self.needs_q = temperature > 0
        # Greedy tests compare each position's argmax alone; the sampling test's op takes a whole draft.
        self.tests_by_position = temperature == 0
        self.draws_per_round = gamma + 1

    def _probs(self, logits):
        return torch.softmax(process_logits(logits, self.temperature, 0, self.top_p), dim=-1)

    def accept(self, t_logits, draft, draft_len, q, u):
        """Kept prefix length per row: greedy matches, or the u < p / q test, capped at draft_len."""
        D = draft.shape[1]
        if self.temperature == 0:
            acc = draft == t_logits[:, :D].argmax(-1)
            return ops.accept_prefix(acc, draft_len)
        p = self._probs(t_logits)                                   # [A, D + 1, V]
        n = ops.speculative_accept(p, q, draft, u[:, :D].to(p.dtype))
        return torch.minimum(n, draft_len)

    def token(self, t_rows, q_rows, rejected, u):
        """The teacher's token per row: from the residual max(0, p - q) where rejected, else from p
        (q_rows None: no draft, every row from p)."""
        if self.temperature == 0:
            return t_rows.argmax(-1)
        p = self._probs(t_rows)
        if q_rows is None:
            q_rows, rejected = torch.zeros_like(p), torch.zeros_like(rejected)
        resid = (p - q_rows).clamp_(min=0)
        # p == q makes the residual vanish; rejection is then impossible, but keep p as a safe fallback.
        resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p)
        dist = torch.where(rejected[:, None], resid, p)
        cdf = dist.cumsum(-1)
        target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=t_rows.shape[-1] - 1)

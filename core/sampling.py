"""Batched sampling of training sequences: SKD interleaved (CONTRACT.md §2), student-only, teacher-only,
AdaSwitch (the student, then the teacher from the position where their divergence jumps).

Public: sample(teacher, student, prompt_ids, cfg, *, student_generator, teacher_generator, ...)
-> Samples; Samples; SampleConfig (re-exported from skd.core.config); PROV_* provenance codes;
share(num, den) (a rate, 0.0 over nothing).
A round is one decoder's named steps (_OneModel: one token per row; _DraftVerify: draft, verify,
commit, or under --gamma auto a teacher-led round: the teacher writes ahead, the student's proposals
are tested after it; _Switch: both models one token per row, the switch test, one token per row);
token choice and rules: skd.core.rules; KV caches: skd.core.kvcache; stops: skd.core.stops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from skd.core import losses, ops
from skd.core.config import SampleConfig
from skd.core.errors import SkdError
from skd.core.kvcache import KVStream
from skd.core.models import weight_bytes
from skd.core.rules import (SkdRule, acceptance_estimate, adaptive_gamma, drafting_pays, mismatch_estimate,
                            plan_round, process_logits, sample_tokens, staging_pays, student_settings,
                            teacher_settings, verify_fixed_tokens)
from skd.core.sparse_teacher import SparseTeacher
from skd.core.split_head import PositionLogits
from skd.core.stops import StopChecker, eos_ids

__all__ = ["SampleConfig", "Samples", "sample", "PROV_PAD", "PROV_PROMPT", "PROV_STUDENT", "PROV_TEACHER",
           "PROV_REJECTED"]

PROV_PAD, PROV_PROMPT, PROV_STUDENT, PROV_TEACHER = 0, 1, 2, 3
PROV_REJECTED = 4   # a student token left in the sequence although the teacher's test rejected it (SpecKD)

# --gamma auto under a rule that allows teacher-only rounds (speculative decoding): while drafting does
# not pay, every PROBE_EVERY-th round still drafts, so the acceptance estimate can recover.
PROBE_EVERY = 16
# Student-led rounds add their kept tokens' expected mismatch (a softmax, and a sort over the vocabulary
# under top-p, per token) to rules.mismatch_estimate's counts until this many kept tokens are counted in a
# call: enough for the estimate (+-0.06), and a bounded cost where most proposals are kept.
MISMATCH_SAMPLES = 64

# Shapes: B prompts, A rows still active, P prompt length, L sequence capacity, R max_new_tokens,
# D draft length (gamma), V vocabulary (the tokenizer's; padded logit columns are cut).


def share(num: int, den: int) -> float:
    """num / den as a float, 0.0 when den is 0 (a rate over nothing)."""
    return num / den if den else 0.0


@dataclass
class Samples:
    """Sampled sequences, right-padded: row b is prompt_b + response_b, then padding."""

    tokens: torch.Tensor          # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64 (1 on prompt + response)
    response_mask: torch.Tensor   # [B, L] bool (response tokens, EOS included)
    provenance: torch.Tensor      # [B, L] int8: 0 pad, 1 prompt, 2 student, 3 teacher
    prompt_lengths: torch.Tensor  # [B] int64
    lengths: torch.Tensor         # [B] int64 (prompt + response)
    teacher_logits: torch.Tensor | SparseTeacher | None  # [B, R, V] (or top-N sparse [B, R]): row i = teacher
                                  # logits predicting response token i
    proposed: int                 # student tokens put to the teacher's top-K test
    accepted: int                 # of those, kept
    replaced: int                 # teacher tokens written in place of a rejected student token
    generated: int                # response tokens in total
    rounds: int                   # draft/verify rounds (skd) or decoding steps (student / teacher)
    row_rounds: int               # sum over rounds of the rows active in it
    # Optional per-method extras (None where the method has none):
    student_argmax: torch.Tensor | None = None  # [B, R] the student's argmax where it wrote response token i
    loss_weights: torch.Tensor | None = None    # [B, L] float weight of each token's loss term (None: 1 each)
    switch_at: torch.Tensor | None = None       # [B] response index of the first teacher token, -1: none
    draft_lengths: tuple[int, ...] | None = None  # skd: each student-led round's draft length (varies under
                                                  # --gamma auto; 0: a teacher-only round of speculative decoding)
    teacher_led_lengths: tuple[int, ...] | None = None  # skd --gamma auto: each teacher-led round's length

    # Rates of the whole batch; 0.0 where the denominator is 0 (nothing was proposed / generated).
    mean_accepted_prefix = property(lambda self: share(self.accepted, self.row_rounds),
                                    doc="Mean number of drafted tokens kept per row and round (skd).")
    correction_rate = property(lambda self: share(self.replaced, self.generated),
                               doc="Share of generated tokens the teacher wrote in place of a student proposal.")
    acceptance_rate = property(lambda self: share(self.accepted, self.proposed),
                               doc="Share of proposed student tokens that the teacher's top-K test kept.")

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.lengths - self.prompt_lengths

    def responses(self) -> list[list[int]]:
        return [self.tokens[b, p:n].tolist()
                for b, (p, n) in enumerate(zip(self.prompt_lengths.tolist(), self.lengths.tolist()))]


# --------------------------------------------------------------------------- the sampler

class _Batch:
    """The book-keeping of one sample() call: sequences, provenance, lengths, active rows, counts.

    It lives on the CPU: it is tiny and the splice op runs there without device syncs."""

    def __init__(self, prompt_ids: list[list[int]], R: int, pad: int, eos: list[int]):
        B = len(prompt_ids)
        self.B, self.R, self.pad = B, R, pad
        self.P = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
        L = int(self.P.max()) + R
        self.seq = torch.full((B, L), pad, dtype=torch.long)
        self.prov = torch.zeros(B, L, dtype=torch.int8)
        for b, p in enumerate(prompt_ids):
            self.seq[b, : len(p)] = torch.tensor(p, dtype=torch.long)
            self.prov[b, : len(p)] = PROV_PROMPT
        self.length = self.P.clone()
        self.finished = torch.zeros(B, dtype=torch.bool)
        self.eos_t = torch.tensor(eos, dtype=torch.long)
        self.splice_eos = eos[0] if len(eos) == 1 else -1  # several EOS ids: detected in end_round instead
        self.pend = torch.tensor([p[-1] for p in prompt_ids], dtype=torch.long)  # last committed, unconsumed
        self.active = torch.arange(B)
        self.t_logits: torch.Tensor | SparseTeacher | None = None  # [B, R, V] (or sparse [B, R]), when asked for
        self.s_argmax: torch.Tensor | None = None  # [B, R] the student's argmax per response token, when asked for
        self.switch_at: torch.Tensor | None = None  # [B] AdaSwitch's switch positions
        self.resp_len = self.remaining = None       # [A] at the start of the round
        self.proposed = self.accepted = self.replaced = self.rounds = self.row_rounds = 0

    def begin_round(self) -> None:
        """Count the round and note each active row's response length and remaining budget."""
        self.rounds += 1
        self.row_rounds += self.active.numel()
        self.resp_len = (self.length - self.P)[self.active]
        self.remaining = self.R - self.resp_len

    def keep_teacher_logits(self, t_logits: torch.Tensor, take: torch.Tensor) -> None:
        """Store t_logits[a, j] (where take[a, j]) as the teacher logits of response token resp_len + j."""
        if self.t_logits is None:
            return
        A, W = take.shape
        dev = self.t_logits.device
        J = torch.arange(W)[None, :]
        rows_b = self.active[:, None].expand(A, W)[take]
        dest = (self.resp_len[:, None] + J).expand(A, W)[take]
        kept = t_logits[take.to(dev)]
        if isinstance(self.t_logits, SparseTeacher):  # only the top-N log-probs + tail are stored
            kept = SparseTeacher.from_logits(kept, self.t_logits.num_kept, self.t_logits.temperature)
        else:
            kept = kept.to(self.t_logits.dtype)
        self.t_logits[rows_b.to(dev), dest.to(dev)] = kept

    def keep_student_argmax(self, argmax: torch.Tensor) -> None:
        """Store argmax[a] as the student's argmax at the response token each active row writes now."""
        if self.s_argmax is not None:
            self.s_argmax[self.active, self.resp_len] = argmax.cpu()

    def commit(self, draft: torch.Tensor, n: torch.Tensor, replacement: torch.Tensor) -> None:
        """Append each active row's first n drafted tokens, then its replacement token (-1: none)."""
        d_full = torch.full((self.B, draft.shape[1]), self.pad, dtype=torch.long)
        d_full[self.active] = draft
        n_full = torch.zeros(self.B, dtype=torch.long)
        n_full[self.active] = n
        rep_full = torch.full((self.B,), -1, dtype=torch.long)
        rep_full[self.active] = replacement
        ops.splice(self.seq, self.length, d_full, n_full, rep_full, self.prov, self.finished, self.splice_eos)

    def append(self, tokens: torch.Tensor, n: torch.Tensor, from_student: torch.Tensor) -> None:
        """Append each active row's first n tokens of tokens[A, W], each marked as the student's (where
        from_student[A, W]) or the teacher's."""
        A, W = tokens.shape
        start = self.length[self.active].clone()
        self.commit(tokens, n, torch.full((A,), -1, dtype=torch.long))   # written as the student's
        J = torch.arange(W)[None, :]
        teacher = ~from_student & (J < n[:, None])
        rows = self.active[:, None].expand(A, W)[teacher]
        cols = (start[:, None] + J).expand(A, W)[teacher]
        written = cols < self.length[rows]              # the splice stops at capacity (never reached here)
        self.prov[rows[written], cols[written]] = PROV_TEACHER

    def end_round(self, new_tokens: torch.Tensor, stopper: StopChecker | None) -> torch.Tensor:
        """Finish the rows at EOS, a stop string or the budget; the indices of the active rows kept."""
        active, P = self.active, self.P
        new_len = self.length[active]
        last = self.seq[active, (new_len - 1).clamp(min=0)]
        done = torch.isin(last, self.eos_t) | (new_len - P[active] >= self.R)
        if stopper is not None:
            for a in range(active.numel()):
                b = int(active[a])
                if self.finished[b] or done[a]:
                    continue
                resp = self.seq[b, int(P[b]): int(new_len[a])].tolist()
                cut = stopper.cut(resp, len(resp) - int(new_tokens[a]))
                if cut is not None:
                    end = int(P[b]) + cut
                    self.seq[b, end:] = self.pad
                    self.prov[b, end:] = PROV_PAD
                    self.length[b] = end
                    done[a] = True
        self.finished[active] |= done
        return (~self.finished[active]).nonzero().squeeze(1)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the active rows `keep` (indices into the active rows)."""
        self.pend = self.pend[keep]
        self.active = self.active[keep]

    def samples(self, all_teacher: bool) -> Samples:
        """The finished batch, cut to its longest row."""
        length, P = self.length, self.P
        Lmax = int(length.max())
        pos = torch.arange(Lmax)[None, :]
        attn = (pos < length[:, None]).long()
        resp_mask = attn.bool() & (pos >= P[:, None])
        generated = int((length - P).sum())
        return Samples(tokens=self.seq[:, :Lmax].contiguous(), attention_mask=attn, response_mask=resp_mask,
                       provenance=self.prov[:, :Lmax].contiguous(), prompt_lengths=P, lengths=length.clone(),
                       teacher_logits=self.t_logits, proposed=self.proposed, accepted=self.accepted,
                       replaced=generated if all_teacher else self.replaced, generated=generated,
                       rounds=self.rounds, row_rounds=self.row_rounds, student_argmax=self.s_argmax,
                       switch_at=self.switch_at)


def _draw(generator: torch.Generator | None, B: int, active: torch.Tensor, device) -> torch.Tensor:
    """B uniforms (one per original row), of which the active rows' are returned.

    Student draws use only the student's generator, teacher draws only the teacher's; as every draw
    takes B uniforms, whether a row is active or not, the number of draws depends only on the number
    of steps, so skd with K >= V reproduces mode "student" and skd with K = 0 mode "teacher" token
    for token."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(B, generator=generator, device=gdev, dtype=torch.float64)
    return u[active.to(gdev)].to(device)


class _OneModel:
    """Modes student and teacher: one model samples one token per row and round."""

    def __init__(self, stream: KVStream, generator, settings: dict, is_teacher: bool):
        self.stream, self.gen, self.settings = stream, generator, settings
        self.teacher = stream if is_teacher else None   # the teacher's stream, when it is the teacher
        self.streams = (stream,)
        self.all_teacher = is_teacher                     # every response token is the teacher's

    def round(self, b: _Batch) -> torch.Tensor:
        """Sample and commit one token per active row (the student's as kept, the teacher's as written)."""
        s = self.stream
        logits = s.forward(b.pend[:, None])[:, -1]
        tok = sample_tokens(logits, _draw(self.gen, b.B, b.active, s.device), **self.settings).cpu()
        A = tok.shape[0]
        if self.teacher is not None:
            b.keep_teacher_logits(logits[:, None], torch.ones(A, 1, dtype=torch.bool))
            b.commit(torch.full((A, 1), b.pad, dtype=torch.long), torch.zeros(A, dtype=torch.long), tok)
        else:
            b.keep_student_argmax(logits.argmax(-1))
            b.commit(tok[:, None], torch.ones(A, dtype=torch.long), torch.full((A,), -1, dtype=torch.long))
        b.pend = tok
        return torch.ones(A, dtype=torch.long)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the active rows `keep`."""
        self.stream.select(keep)


@dataclass
class _Draft:
    """One round's draft: tokens [A, D_eff], valid lengths [A], rows ended by it [A], q [A, D, V]."""

    tokens: torch.Tensor
    length: torch.Tensor
    ended: torch.Tensor
    q: torch.Tensor | None


@dataclass
class _Verdict:
    """The teacher's answer to a draft: its logits [A, D_eff + 1, V], kept prefix n [A], its tokens."""

    t_logits: torch.Tensor
    n: torch.Tensor
    full: torch.Tensor        # [A] whole draft kept
    need_tok: torch.Tensor    # [A] a teacher token follows the kept prefix
    t_tok: torch.Tensor       # [A] that token (where need_tok)
    t_slots: int              # slots the verification appended to the teacher's cache (W, or 1 when staged
    #                           verification stopped after the first position)


class _Staged:
    """The logits of a verification run in two stages, as PositionLogits: the first position of every
    row at once, the later positions of the rows that need them (more(rows)) in a pass over those rows
    alone (KVStream.forward_rows). Logits at a position are those of one whole pass: same prefixes."""

    def __init__(self, stream: KVStream, t_in: torch.Tensor, defer_head: bool):
        self.stream, self.t_in, self.defer_head = stream, t_in, defer_head
        self.shape = t_in.shape
        self.first = self._logits(stream.forward(t_in[:, :1], head=not defer_head))
        self.later: PositionLogits | None = None
        self.index = torch.full((t_in.shape[0],), -1, dtype=torch.long, device=t_in.device)
        self.slots = 1            # slots appended to the teacher's cache so far

    @staticmethod
    def _logits(out) -> PositionLogits:
        return out if isinstance(out, PositionLogits) else PositionLogits(out, lambda x: x)

    def more(self, rows: torch.Tensor) -> None:
        """Run positions 1 .. W - 1 of `rows` (every other row gets holes there)."""
        rows = rows.to(self.t_in.device)
        self.later = self._logits(self.stream.forward_rows(rows, self.t_in[rows, 1:], head=not self.defer_head))
        self.index[rows] = torch.arange(rows.numel(), device=rows.device)
        self.slots = self.shape[1]

    def at(self, rows: torch.Tensor, positions: torch.Tensor | int) -> torch.Tensor:
        """Logits [m, V] at (rows[i], positions[i]); a position after the first only for rows given to more()."""
        if isinstance(positions, int):   # the per-position test: one position for every row
            return self.first.at(rows, 0) if positions == 0 else self.later.at(self.index[rows], positions - 1)
        head = positions == 0
        if bool(head.all()):
            return self.first.at(rows, 0)
        later_rows = self.index[rows[~head]]
        assert self.later is not None and bool((later_rows >= 0).all()), "a later position of a row not staged"
        tail = self.later.at(later_rows, positions[~head] - 1)
        if not bool(head.any()):
            return tail
        out = tail.new_empty(rows.numel(), tail.shape[-1])
        out[~head] = tail
        out[head] = self.first.at(rows[head], 0)
        return out


class _DraftVerify:
    """Mode skd: the student drafts, the teacher verifies, the rule accepts and corrects (CONTRACT.md §2).

    SKD (Xu et al., ICLR 2025, Algorithm 1 in the block form of the released code): per round the
    student drafts up to D tokens, the teacher scores prefix + draft in one pass, the longest prefix
    of drafted tokens inside the teacher's top-K is kept, the first rejected token is replaced by a
    teacher sample, and drafting resumes from the corrected prefix. Finished rows leave both caches."""

    all_teacher = False

    def __init__(self, s: KVStream, t: KVStream, rule, cfg: SampleConfig, B: int, V: int,
                 student_generator, teacher_generator):
        self.s, self.t, self.teacher, self.streams = s, t, t, (s, t)
        self.rule, self.D, self.V = rule, cfg.max_draft, V
        # --gamma auto: each round's draft length from the acceptance so far in this call and the cost of a
        # teacher forward in student forwards, taken as the ratio of their weight bytes: a forward of a few
        # positions reads every weight once, so a bf16 teacher beside an fp32 student costs half its
        # parameter ratio (the same as the parameter ratio when both share a dtype). Deterministic, unlike
        # a clock, so the same seeds give the same sequences and a resumed run stays exact. Prices measured
        # once on the machine (SampleConfig.teacher_prices, per pass width: on a CPU a pass's price grows
        # with its positions) replace the ratio and stay as deterministic, being fixed numbers.
        self.auto = cfg.gamma == "auto"
        self.cost_ratio = 0.0
        if self.auto:   # given prices per pass width (SampleConfig.teacher_prices), else the weight-byte ratio
            if isinstance(cfg.teacher_prices, str):   # "measure" is resolved to numbers by training
                raise SkdError(f"teacher_prices {cfg.teacher_prices!r} reached the sampler unmeasured",
                               "pass numbers (--teacher-prices 1.4,1.9,...); measure is for skd distill")
            self.cost_ratio = cfg.teacher_prices or weight_bytes(t.model) / max(1, weight_bytes(s.model))
        self.may_skip = self.auto and getattr(rule, "may_skip_draft", False)
        # Verification tests position by position, the teacher's output layer put off until a row's
        # position is reached (accept_by_position), where the rule tests each position on its own logits
        # and the teacher's model can be split (skd.core.split_head).
        by_position = getattr(rule, "tests_by_position", False)
        self.lazy_head = t.defers_head and by_position
        # Staged verification (rules.staging_pays): where the rule tests each position on its own logits,
        # a round may score every row's first drafted position alone, then the later positions of just the
        # rows that kept it; with a weak draft most rows stop at the first, and so does their share of the
        # teacher's products. Fixed tokens per pass: rules.verify_fixed_tokens (None: never staged).
        self.stage_tokens = None
        if cfg.staged_verify and by_position:
            self.stage_tokens = verify_fixed_tokens(sum(p.numel() for p in t.model.parameters()), t.device.type)
        self.skipped = 0              # teacher-only rounds since the last draft
        self.gammas: list[int] = []   # the draft length of each student-led round (0: a teacher-only round)
        # --gamma auto under SKD's rule without the bonus token: rounds may be teacher-led (rules.plan_round)
        self.may_lead = (self.auto and cfg.teacher_led and getattr(rule, "teacher_may_lead", False)
                         and not rule.keep_bonus)
        self.led: list[int] = []      # the length of each teacher-led round
        # rules.mismatch_estimate's counts: kept proposals, and how many of them differed (or, in student-led
        # rounds, would have differed in expectation) from the teacher's own draw at their position
        self.kept = 0
        self.mismatched = 0.0
        self.st = student_settings(cfg, drafting=True)
        self.s_gen, self.t_gen = student_generator, teacher_generator
        # Committed tokens the student has not consumed, per row, right-aligned, -1 = none: the last draft
        # token of a fully accepted draft followed by a bonus token (the student drafts D tokens from D
        # forwards), and the tokens of teacher-only rounds. They are fed, before the pending token, in
        # the next round's first student forward.
        self.s_extra = torch.full((B, 1), -1, dtype=torch.long)

    def round(self, b: _Batch) -> torch.Tensor:
        """One round (student-led: draft, verify with the correction, commit; or teacher-led; or, for
        speculative decoding, the teacher's alone); the tokens each active row gained [A]."""
        led, D = self.plan(b)
        if led:
            self.led.append(D)
            return self.teacher_led_round(b, D)
        self.gammas.append(D)
        if D == 0:
            return self.teacher_round(b)
        d = self.draft(b, D)
        v = self.verify(b, d)
        return self.commit(b, d, v)

    def plan(self, b: _Batch) -> tuple[bool, int]:
        """(teacher-led, length) of this round: a student-led draft of the fixed length, or under --gamma
        auto the plan with the most expected tokens per unit of cost from the acceptance so far
        (rules.acceptance_estimate: the kept tokens over the tested ones; the first round plans for a coin
        flip): rules.plan_round where teacher-led rounds are allowed, else rules.adaptive_gamma.
        Length 0 (a teacher-only round) where the rule allows it and rules.drafting_pays says no draft
        beats the teacher alone, except every PROBE_EVERY-th such round."""
        if not self.auto:
            return False, self.D
        a = acceptance_estimate(b.accepted, b.replaced)   # replaced: the rejections
        if self.may_skip and not drafting_pays(a, self.cost_ratio, self.D, self.rule.keep_bonus):
            if self.skipped < PROBE_EVERY - 1:
                self.skipped += 1
                return False, 0
        self.skipped = 0
        if self.may_lead:
            return plan_round(a, mismatch_estimate(self.mismatched, self.kept), self.cost_ratio, self.D,
                              False, True)
        return False, adaptive_gamma(a, self.cost_ratio, self.D, self.rule.keep_bonus)

    def draft(self, b: _Batch, D: int) -> _Draft:
        """The student proposes up to D tokens per row, stopping a row at EOS or its budget."""
        s, st, dev = self.s, self.st, self.s.device
        A = b.active.numel()
        draft = torch.full((A, D), b.pad, dtype=torch.long, device=dev)
        draft_len = torch.full((A,), D, dtype=torch.long, device=dev)
        ended = torch.zeros(A, dtype=torch.bool, device=dev)
        rem_s, eos_s, cur = b.remaining.to(dev), b.eos_t.to(dev), b.pend.to(dev)
        D_eff = 0
        q = torch.zeros(A, D, self.V, dtype=torch.float32, device=dev) if self.rule.needs_q else None
        for j in range(D):
            if j == 0 and bool((self.s_extra >= 0).any()):
                ids = torch.cat([self.s_extra.clamp(min=0), b.pend[:, None]], 1)
                valid = torch.cat([self.s_extra >= 0, torch.ones(A, 1, dtype=torch.bool)], 1)
                logits = s.forward(ids.to(dev), valid)[:, -1]
            else:
                logits = s.forward(cur[:, None])[:, -1]
            tok = sample_tokens(logits, _draw(self.s_gen, b.B, b.active, dev), **st)
            if q is not None:  # the draft distribution, for the speculative acceptance test
                q[:, j] = torch.softmax(process_logits(logits, st["temperature"], st["top_k"], st["top_p"]), -1)
            draft[:, j] = tok
            D_eff = j + 1
            stop_here = ~ended & (torch.isin(tok, eos_s) | (rem_s <= j + 1))
            draft_len = torch.where(stop_here, torch.full_like(draft_len, j + 1), draft_len)
            ended |= stop_here
            cur = tok
            if bool(ended.all()):  # host sync, once per draft step: no row needs more tokens
                break
        return _Draft(draft[:, :D_eff], draft_len, ended, q)

    def verify(self, b: _Batch, d: _Draft) -> _Verdict:
        """One teacher pass over [last committed token, draft]; the kept prefix and the teacher's token.

        With the bonus token discarded (SKD's default) no round needs the teacher's distribution after
        its last drafted token, so the pass covers [last committed token, draft without its last token]:
        D_eff positions, every row a test of one drafted token. A fully kept draft's last token is the
        next round's first teacher input, as it must be anyway. With the bonus kept the pass covers the
        whole draft (D_eff + 1 positions, the last one the bonus row). Same logits at every tested
        position; one position fewer per pass, which a CPU's forward prices (its cost grows with its
        positions)."""
        t_dev, rule = self.t.device, self.rule
        D_eff = d.tokens.shape[1]
        W = D_eff + 1 if rule.keep_bonus else D_eff                        # teacher positions this round
        t_in = torch.cat([b.pend.to(t_dev)[:, None], d.tokens[:, :W - 1].to(t_dev)], 1)
        staged = self.stage_tokens is not None and staging_pays(
            acceptance_estimate(b.accepted, b.replaced), t_in.shape[0], W, self.stage_tokens)
        if staged:
            lazy = _Staged(self.t, t_in, self.lazy_head)
        else:
            lazy = self.t.forward(t_in, head=False) if self.lazy_head else None
        t_logits = self.t.forward(t_in) if lazy is None else None           # [A, W, V]
        u = torch.stack([_draw(self.t_gen, b.B, b.active, t_dev) for _ in range(rule.draws_per_round)], 1)
        q = d.q[:, :D_eff].to(t_dev) if d.q is not None else None
        if lazy is None:
            n = rule.accept(t_logits, d.tokens.to(t_dev), d.length.to(t_dev), q, u).cpu()
        else:
            t_logits, n, tested = self.accept_by_position(lazy, d, u)
        d.length, d.ended, d.tokens = d.length.cpu(), d.ended.cpu(), d.tokens.cpu()
        # The teacher's token at the first rejection, or the bonus row on full acceptance; a draft that
        # ended its row and was kept whole gets none (CONTRACT.md §2, step 6).
        full = n == d.length
        need_tok = ~full | (~d.ended & rule.keep_bonus)
        # The t_logits row to sample from; a row needing no token reads row 0, always tested (its token unused).
        row = torch.where(full, torch.full_like(n, D_eff), n).clamp(max=W - 1)
        row = torch.where(need_tok, row, torch.zeros_like(row))
        ar = torch.arange(n.shape[0])
        if lazy is not None:   # rows whose token row no test reached (the bonus row; a draft that ended early)
            todo = (~tested[ar, row]).nonzero().flatten()
            if todo.numel():
                at = (todo.to(t_dev), row[todo].to(t_dev))
                logits = lazy.at(*at)
                if t_logits is None:
                    t_logits = logits.new_empty(*lazy.shape, logits.shape[-1])
                t_logits[at] = logits
        q_rows = q[ar.to(t_dev), row.clamp(max=D_eff - 1).to(t_dev)] if q is not None else None
        t_tok = rule.token(t_logits[ar.to(t_dev), row.to(t_dev)], q_rows, (~full).to(t_dev), u[:, -1]).cpu()
        return _Verdict(t_logits, n, full, need_tok, t_tok, lazy.slots if staged else W)

    def accept_by_position(self, lazy: PositionLogits, d: _Draft, u: torch.Tensor):
        """rule.accept one position at a time, the teacher's output layer run only on the rows whose draft
        is still kept up to that position: (t_logits [A, W, V], filled where tested; n [A]; tested [A, W]).

        Same kept prefix as one test over all positions (the rules taking this path test each position
        on its own logits), but a row's positions after its first rejection never reach the output layer:
        with a weak draft, most rows are rejected at the first."""
        A, W = lazy.shape
        dev, D_eff = self.t.device, d.tokens.shape[1]
        tokens, length = d.tokens.to(dev), d.length.to(dev)
        t_logits = None                  # allocated at the first logits, in their dtype
        tested = torch.zeros(A, W, dtype=torch.bool)
        n = torch.zeros(A, dtype=torch.long, device=dev)
        for j in range(D_eff):
            rows = ((n == j) & (length > j)).nonzero().flatten()             # host sync: rows still kept
            if rows.numel() == 0:
                break
            logits = lazy.at(rows, j)
            if t_logits is None:
                t_logits = logits.new_empty(A, W, logits.shape[-1])
            t_logits[rows, j] = logits
            tested[rows.cpu(), j] = True
            one = torch.ones(rows.numel(), dtype=torch.long, device=dev)
            # (the rules on this path read no draws in their test: u is passed as the API has it)
            n[rows] += self.rule.accept(logits[:, None], tokens[rows, j:j + 1], one, None, u[rows])
            if j == 0 and isinstance(lazy, _Staged) and W > 1:
                # the second stage: the rows that kept their first token and have a later position to
                # test, or the bonus row to sample from
                later = (n == 1) & ((length > 1) | (self.rule.keep_bonus & ~d.ended.to(dev)))
                if bool(later.any()):
                    lazy.more(later.nonzero().flatten())
        return t_logits, n.cpu(), tested

    def commit(self, b: _Batch, d: _Draft, v: _Verdict) -> torch.Tensor:
        """Write the kept prefix and the teacher's token; turn the rejected slots of both caches into holes."""
        n, full, need_tok, t_tok, draft = v.n, v.full, v.need_tok, v.t_tok, d.tokens
        A, D_eff = draft.shape
        W = v.t_logits.shape[1]                  # teacher positions of the round: D_eff + 1, or D_eff (no bonus)
        J = torch.arange(W)[None, :]
        b.keep_teacher_logits(v.t_logits, (J < n[:, None]) | ((J == n[:, None]) & need_tok[:, None]))
        if self.may_lead and self.kept < MISMATCH_SAMPLES:
            self.count_mismatch(v.t_logits, draft, n)
        b.commit(draft, n, torch.where(need_tok, t_tok, torch.full_like(t_tok, -1)))
        b.proposed += int(d.length.sum())
        b.accepted += int(n.sum())
        b.replaced += int((~full).sum())
        # Next round starts from the last committed token, which neither cache may hold yet.
        last_draft = draft[torch.arange(A), (n - 1).clamp(min=0)]
        b.pend = torch.where(need_tok, t_tok, last_draft)
        s_valid = 1 + torch.minimum(n, torch.full_like(n, D_eff - 1))
        self.s.invalidate_tail(D_eff - s_valid)
        # The teacher's slots that stay: the last committed token and the kept draft tokens, less a kept last
        # draft token without a teacher token after it (it is next round's first input; without the bonus
        # it was never fed).
        t_valid = 1 + n - (~need_tok).long()
        self.t.invalidate_tail(v.t_slots - t_valid)
        self.s_extra = torch.where(full & need_tok, draft[:, D_eff - 1], torch.full_like(n, -1))[:, None]
        return n + need_tok.long()

    def count_mismatch(self, t_logits: torch.Tensor, draft: torch.Tensor, n: torch.Tensor) -> None:
        """Add a student-led round's kept tokens to the mismatch counts: for each, the probability that the
        teacher's draw at its position (its sampling settings) would have been another token. No draw is
        made, so the round's tokens and random streams are untouched."""
        W = t_logits.shape[1]
        kept = torch.arange(min(W, draft.shape[1]))[None, :] < n[:, None]          # [A, min(W, D)]
        if not bool(kept.any()):
            return
        dev = t_logits.device
        rows = t_logits[:, : kept.shape[1]][kept.to(dev)]                           # [N, V]
        st = self.rule.teacher
        p = torch.softmax(process_logits(rows, st["temperature"], st["top_k"], st["top_p"]), -1) \
            if st["temperature"] > 0 else torch.nn.functional.one_hot(rows.argmax(-1), rows.shape[-1]).float()
        same = p.gather(1, draft[:, : kept.shape[1]][kept].to(dev)[:, None]).sum()
        count = int(kept.sum())
        self.kept += count
        self.mismatched += count - float(same)

    def teacher_led_round(self, b: _Batch, n: int) -> torch.Tensor:
        """A teacher-led round (rules.plan_round): the teacher writes up to n tokens ahead, each sampled as it
        would sample a replacement (its settings, one teacher draw per position); the student scores
        [last committed token, those tokens but the last] in one pass and proposes a token at each position
        (one student draw per position); each position takes the proposal if it passes the top-K test,
        else the teacher's token, CONTRACT.md §2's law. The round keeps positions up to the first kept
        proposal that differs from the teacher's token (a break: the later positions were written on
        another prefix), and ends a row's chain at the teacher's EOS or the row's budget. Both caches keep
        the slots of the kept prefix; the teacher logits of every kept position serve as loss targets."""
        t_dev, s_dev, A = self.t.device, self.s.device, b.active.numel()
        rem, eos = b.remaining, b.eos_t
        every = torch.ones(A, dtype=torch.bool, device=t_dev)
        cur, rows, chain = b.pend.to(t_dev), [], []
        ended = torch.zeros(A, dtype=torch.bool)
        for i in range(n):
            logits = self.t.forward(cur[:, None])[:, -1]                     # [A, V]
            cur = self.rule.token(logits, None, every, _draw(self.t_gen, b.B, b.active, t_dev))
            rows.append(logits)
            chain.append(cur)
            ended |= torch.isin(cur.cpu(), eos) | (rem <= i + 1)
            if bool(ended.all()):   # no row can use a further position
                break
        W = len(chain)
        t_logits, r = torch.stack(rows, 1), torch.stack(chain, 1).cpu()     # [A, W, V], [A, W]
        ids = torch.cat([b.pend[:, None], r[:, : W - 1]], 1)
        valid = None
        if bool((self.s_extra >= 0).any()):   # committed tokens the student has not consumed go first
            valid = torch.cat([self.s_extra >= 0, torch.ones(A, W, dtype=torch.bool)], 1)
            ids = torch.cat([self.s_extra.clamp(min=0), ids], 1)
        s_logits = self.s.forward(ids.to(s_dev), valid)[:, -W:]              # [A, W, V]
        u = torch.stack([_draw(self.s_gen, b.B, b.active, s_dev) for _ in range(W)], 1)
        y = sample_tokens(s_logits, u, **self.st).cpu()                      # the student's proposals
        kept = self.rule.in_top_k(t_logits, y.to(t_dev)).cpu()
        J = torch.arange(W)[None, :]
        chain_end = torch.isin(r, eos) | (J + 1 >= rem[:, None])             # the teacher's EOS, or the budget
        lim = torch.where(chain_end.any(1), chain_end.int().argmax(1) + 1, torch.full((A,), W))
        brk = kept & (y != r) & (J < lim[:, None])
        has_brk = brk.any(1)
        j = torch.where(has_brk, brk.int().argmax(1) + 1, lim)             # positions the round keeps
        tokens = torch.where(kept, y, r)
        take = J < j[:, None]
        b.keep_teacher_logits(t_logits, take)
        b.append(tokens, j, kept)
        n_kept = int((kept & take).sum())
        b.proposed += int(j.sum())
        b.accepted += n_kept
        b.replaced += int((~kept & take).sum())
        self.kept += n_kept
        self.mismatched += int(has_brk.sum())   # each break is the one kept token that differed
        # Both models were fed [last committed, r_0 .. r_(W-2)]: the first j slots hold committed tokens.
        self.t.invalidate_tail(W - j)
        self.s.invalidate_tail(W - j)
        self.s_extra = torch.full((A, 1), -1, dtype=torch.long)
        b.pend = tokens[torch.arange(A), j - 1]
        return j

    def teacher_round(self, b: _Batch) -> torch.Tensor:
        """A round without a draft: the teacher writes one token per row (its own distribution, or its
        argmax when greedy); the student catches up on it in the next drafting round."""
        t_dev, A = self.t.device, b.active.numel()
        t_logits = self.t.forward(b.pend.to(t_dev)[:, None])                # [A, 1, V]
        u = torch.stack([_draw(self.t_gen, b.B, b.active, t_dev) for _ in range(self.rule.draws_per_round)], 1)
        tok = self.rule.token(t_logits[:, 0], None, torch.zeros(A, dtype=torch.bool, device=t_dev), u[:, -1]).cpu()
        b.keep_teacher_logits(t_logits, torch.ones(A, 1, dtype=torch.bool))
        b.commit(torch.zeros(A, 0, dtype=torch.long), torch.zeros(A, dtype=torch.long), tok)
        extra = torch.cat([self.s_extra, b.pend[:, None]], 1)
        used = (extra >= 0).any(0).nonzero()
        self.s_extra = extra[:, int(used[0]):]   # drop the columns no row uses (on the left)
        b.pend = tok
        return torch.ones(A, dtype=torch.long)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the active rows `keep`."""
        for s in self.streams:
            s.select(keep)
        self.s_extra = self.s_extra[keep]


class _Switch:
    """Mode adaswitch (AdaSwitch, Peng et al., arXiv 2510.07842): each row is written by the student until
    the divergence between the two models at the next position jumps to `switch_threshold` times its
    running mean over the row's last `switch_window` positions; from there the teacher writes the rest.

    A round feeds both models the last committed token (one forward each; the teacher's logits are kept
    for the loss), computes d_i = D(p_teacher || q_student) on the raw logits (temperature 1) for the rows
    not yet switched, and samples token i from the student (its settings, a student draw) or, in a row that
    has switched, from the teacher (its settings, a teacher draw). A row can switch from response token 1
    on (token 0 has no history to compare with). Draws: B student uniforms every round and B teacher
    uniforms every round but the first, so an infinite threshold reproduces mode "student" token for token
    and threshold 0 reproduces mode "teacher" continuing the student's first token. Once every active row
    has switched the student is no longer run."""

    all_teacher = False

    def __init__(self, s: KVStream, t: KVStream, cfg: SampleConfig, B: int, student_generator, teacher_generator):
        self.s, self.t, self.teacher, self.streams = s, t, t, (s, t)
        self.st, self.tt = student_settings(cfg, drafting=False), teacher_settings(cfg)
        self.s_gen, self.t_gen = student_generator, teacher_generator
        self.threshold, self.kind = cfg.switch_threshold, cfg.switch_divergence
        self.hist = torch.zeros(B, cfg.switch_window, dtype=torch.float64)  # newest divergence at the right
        self.seen = torch.zeros(B, dtype=torch.long)                         # divergences in the window
        self.switched = torch.zeros(B, dtype=torch.bool)
        self.student_done = False

    def round(self, b: _Batch) -> torch.Tensor:
        """One token per active row: the student's, or the teacher's in rows that have switched."""
        A = b.active.numel()
        t_logits = self.t.forward(b.pend[:, None])[:, -1]                    # [A, V]
        u_s = _draw(self.s_gen, b.B, b.active, self.s.device)                # drawn every round
        u_t = _draw(self.t_gen, b.B, b.active, self.t.device) if b.rounds > 1 else None
        tok_s = None
        if not self.student_done:
            s_logits = self.s.forward(b.pend[:, None])[:, -1]
            tok_s = sample_tokens(s_logits, u_s, **self.st).cpu()
            self.test(b, s_logits, t_logits)
        tok = tok_s if tok_s is not None else torch.zeros(A, dtype=torch.long)
        if bool(self.switched.any()):
            tok = torch.where(self.switched, sample_tokens(t_logits, u_t, **self.tt).cpu(), tok)
        b.keep_teacher_logits(t_logits[:, None], torch.ones(A, 1, dtype=torch.bool))
        b.commit(tok[:, None], (~self.switched).long(), torch.where(self.switched, tok, torch.full_like(tok, -1)))
        b.replaced += int(self.switched.sum())
        b.pend = tok
        self.student_done = bool(self.switched.all())
        return torch.ones(A, dtype=torch.long)

    def test(self, b: _Batch, s_logits: torch.Tensor, t_logits: torch.Tensor) -> None:
        """The switch test of the rows not yet switched, then their divergence joins the window."""
        d = losses.divergence_per_token(s_logits.to(t_logits.device), t_logits, self.kind).double().cpu()  # [A]
        if self.threshold != float("inf"):
            mean = self.hist.sum(1) / self.seen.clamp(min=1)
            fire = ~self.switched & (self.seen > 0) & (d >= self.threshold * mean)
            if bool(fire.any()):
                self.switched |= fire
                b.switch_at[b.active[fire]] = b.resp_len[fire]
        self.hist = torch.cat([self.hist[:, 1:], d[:, None]], 1)
        self.seen = (self.seen + 1).clamp(max=self.hist.shape[1])

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the active rows `keep`."""
        for s in self.streams:
            s.select(keep)
        self.hist, self.seen, self.switched = self.hist[keep], self.seen[keep], self.switched[keep]


def _check_inputs(teacher, student, prompt_ids, cfg: SampleConfig, tokenizer) -> None:
    """Refuse, with the fix, what the sampler cannot serve."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise SkdError("every prompt needs at least one token", "check the prompt template / tokenizer")
    mode = cfg.mode
    if mode in ("skd", "teacher", "adaswitch") and teacher is None:
        raise SkdError(f"sampling mode {mode!r} needs a teacher model", "pass --teacher")
    if mode in ("skd", "student", "adaswitch") and student is None:
        raise SkdError(f"sampling mode {mode!r} needs a student model", "pass --student")
    if cfg.stop_strings and tokenizer is None:
        raise SkdError("stop strings need the tokenizer", "pass tokenizer= to sample()")


def _token_ids(models, tokenizer, eos_token_id, pad_token_id, vocab_size) -> tuple[int, list[int], int]:
    """Vocabulary size, EOS ids and pad id: as given, else from the tokenizer and the models."""
    if vocab_size is None:
        vocab_size = len(tokenizer) if tokenizer is not None else min(m.config.vocab_size for m in models)
    eos = eos_ids(models, eos_token_id)
    if pad_token_id is None:  # the pad id only fills unused slots; any valid id will do
        candidates = [getattr(tokenizer, "pad_token_id", None)] + [m.config.pad_token_id for m in models] + eos
        pad_token_id = next((int(c) for c in candidates if isinstance(c, int) and 0 <= c < vocab_size), 0)
    return vocab_size, eos, pad_token_id


def _decoder(teacher, student, prompt_ids, cfg: SampleConfig, rule, V: int, pad: int,
             student_generator, teacher_generator):
    """The decoder of cfg.mode, its KV streams prefilled with every prompt but its last token."""
    def stream(model):
        s = KVStream(model, V)
        s.prefill([p[:-1] for p in prompt_ids], pad, reserve=cfg.max_new_tokens + cfg.max_draft + 1)
        return s

    if cfg.mode == "student":
        return _OneModel(stream(student), student_generator, student_settings(cfg, drafting=False), False)
    if cfg.mode == "teacher":
        return _OneModel(stream(teacher), teacher_generator, teacher_settings(cfg), True)
    if cfg.mode == "adaswitch":
        return _Switch(stream(student), stream(teacher), cfg, len(prompt_ids), student_generator, teacher_generator)
    s = stream(student)
    return _DraftVerify(s, stream(teacher), rule if rule is not None else SkdRule(cfg), cfg, len(prompt_ids), V,
                        student_generator, teacher_generator)


def sample(teacher, student, prompt_ids: list[list[int]], cfg: SampleConfig, *,
           student_generator: torch.Generator | None = None,
           teacher_generator: torch.Generator | None = None,
           tokenizer=None, eos_token_id=None, pad_token_id: int | None = None,
           vocab_size: int | None = None, rule=None) -> Samples:
    """Sample one response per prompt (ragged lists of token ids, no padding). See module doc.

    `rule` replaces the SKD verification rule (skd.core.speculative passes SpeculativeRule)."""
    _check_inputs(teacher, student, prompt_ids, cfg, tokenizer)
    models = [m for m in (teacher, student) if m is not None]
    V, eos, pad = _token_ids(models, tokenizer, eos_token_id, pad_token_id, vocab_size)
    stopper = StopChecker(tokenizer, cfg.stop_strings) if cfg.stop_strings else None
    batch = _Batch(prompt_ids, cfg.max_new_tokens, pad, eos)
    decoder = _decoder(teacher, student, prompt_ids, cfg, rule, V, pad, student_generator, teacher_generator)
    if cfg.keep_teacher_logits and decoder.teacher is not None:
        w = next(decoder.teacher.model.parameters())
        if cfg.target_topk is not None:  # top-N + tail per position: the [B, R, V] buffer is never allocated
            batch.t_logits = SparseTeacher.zeros(batch.B, cfg.max_new_tokens, n=min(cfg.target_topk, V),
                                                 vocab_size=V, temperature=cfg.target_temperature,
                                                 dtype=torch.float64 if w.dtype == torch.float64 else torch.float32,
                                                 device=w.device)
        else:
            batch.t_logits = torch.zeros(batch.B, cfg.max_new_tokens, V, dtype=w.dtype, device=w.device)
    if cfg.mode == "student" and cfg.speckd_verification == "greedy":   # SpecKD judges the student's argmax
        batch.s_argmax = torch.zeros(batch.B, cfg.max_new_tokens, dtype=torch.long)
    if cfg.mode == "adaswitch":
        batch.switch_at = torch.full((batch.B,), -1, dtype=torch.long)
    while batch.active.numel() > 0:
        batch.begin_round()
        new_tokens = decoder.round(batch)
        keep = batch.end_round(new_tokens, stopper)
        if keep.numel() < batch.active.numel():
            decoder.select(keep)
            batch.select(keep)
        for s in decoder.streams:
            s.maybe_compact()
    out = batch.samples(all_teacher=decoder.all_teacher)
    if isinstance(decoder, _DraftVerify):
        out.draft_lengths = tuple(decoder.gammas)
        out.teacher_led_lengths = tuple(decoder.led)
    return out

"""Batched sampling of training sequences: SKD interleaved, student-only and teacher-only.

Public: sample(teacher, student, prompt_ids, cfg, *, student_generator, teacher_generator, ...)
-> Samples; SampleConfig (re-exported from skd.core.config); Samples; process_logits(...);
sample_tokens(...); KVStream (one model's incremental view of a ragged batch, shared with
skd.core.speculative).

Shapes: B prompts, A rows still active, P prompt length, L sequence capacity, R max_new_tokens,
D draft length (gamma), V vocabulary (the tokenizer's; padded logit columns are cut).

SKD (Xu et al., ICLR 2025, Algorithm 1 in the block form of the released code; SKD_SPEC.md
section 2): per round the student drafts up to D tokens, the teacher scores prefix + draft in one
pass, the longest prefix of drafted tokens inside the teacher's top-K is kept, the first rejected
token is replaced by a teacher sample, and drafting resumes from the corrected prefix.

Ragged rows share one KV cache per model without per-row cropping: every forward appends the same
number of slots to every row, and the slots of rejected draft tokens become "holes" masked out of
attention; positions are passed explicitly (count of valid tokens before a slot), so holes change
neither RoPE nor absolute position embeddings. When holes dominate, the cache is compacted.
Finished rows are dropped from both caches, so they stop costing compute.

Randomness: student draws use only `student_generator`, teacher draws only `teacher_generator`.
Each draw takes B uniforms (one per original row, whether active or not), so that the number of
draws depends only on the number of steps; this makes skd with K >= V reproduce mode "student"
and skd with K = 0 reproduce mode "teacher" token for token.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from skd.core import ops
from skd.core.config import SampleConfig
from skd.core.errors import SkdError

__all__ = ["SampleConfig", "Samples", "sample", "process_logits", "sample_tokens", "KVStream",
           "PROV_PAD", "PROV_PROMPT", "PROV_STUDENT", "PROV_TEACHER"]

PROV_PAD, PROV_PROMPT, PROV_STUDENT, PROV_TEACHER = 0, 1, 2, 3


@dataclass
class Samples:
    """Sampled sequences, right-padded: row b is prompt_b + response_b, then padding."""

    tokens: torch.Tensor          # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64 (1 on prompt + response)
    response_mask: torch.Tensor   # [B, L] bool (response tokens, EOS included)
    provenance: torch.Tensor      # [B, L] int8: 0 pad, 1 prompt, 2 student, 3 teacher
    prompt_lengths: torch.Tensor  # [B] int64
    lengths: torch.Tensor         # [B] int64 (prompt + response)
    teacher_logits: torch.Tensor | None  # [B, R, V]: row i = teacher logits predicting response token i
    proposed: int                 # student tokens put to the teacher's top-K test
    accepted: int                 # of those, kept
    replaced: int                 # teacher tokens written in place of a rejected student token
    generated: int                # response tokens in total
    rounds: int                   # draft/verify rounds (skd) or decoding steps (student / teacher)
    row_rounds: int               # sum over rounds of the rows active in it

    @property
    def mean_accepted_prefix(self) -> float:
        """Mean number of drafted tokens kept per row and round (skd)."""
        return self.accepted / self.row_rounds if self.row_rounds else 0.0

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.lengths - self.prompt_lengths

    @property
    def correction_rate(self) -> float:
        """Share of generated tokens that the teacher wrote in place of a student proposal."""
        return self.replaced / self.generated if self.generated else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    def responses(self) -> list[list[int]]:
        return [self.tokens[b, p:n].tolist()
                for b, (p, n) in enumerate(zip(self.prompt_lengths.tolist(), self.lengths.tolist()))]


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


def _draw(generator: torch.Generator | None, B: int, active: torch.Tensor, device) -> torch.Tensor:
    """B uniforms (one per original row), of which the active rows' are returned."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(B, generator=generator, device=gdev, dtype=torch.float64)
    return u[active.to(gdev)].to(device)


# --------------------------------------------------------------------------- KV streams

def _cache_kwarg(model) -> str:
    model = getattr(model, "skd_inner", model)      # distributed.LockstepStudent: the model it runs
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


_GROWING_LAYER = None


def _growing_layer_class():
    """transformers' DynamicLayer with its keys/values kept as prefix views of a preallocated buffer.

    DynamicLayer.update concatenates the whole cache with every new slot, so each decoding step copies
    the cache (11% of the batched sampler's time on the tiny models). Here an update writes the new
    slots in place and the capacity doubles when full (amortised O(1) copies per slot). Anything
    that replaces .keys/.values from outside (beam reorder, crop to a copy) is noticed by identity
    and the layer re-adopts the new tensors, so it is never less correct than DynamicLayer."""
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            def adopt(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
                A, H, n, dk = keys.shape
                cap = max(capacity, n, 1)
                self.device, self.is_initialized = keys.device, True
                self._kbuf = keys.new_empty(A, H, cap, dk)
                self._vbuf = values.new_empty(A, H, cap, values.shape[-1])
                self._kbuf[:, :, :n].copy_(keys)
                self._vbuf[:, :, :n].copy_(values)
                self._set(n)

            def _set(self, n: int) -> None:
                self.keys = self._kbuf[:, :, :n]
                self.values = self._vbuf[:, :, :n]
                self._views = (self.keys, self.values)

            def _current(self) -> int:
                if self.keys is not self._views[0] or self.values is not self._views[1]:
                    self.adopt(self.keys, self.values, self._kbuf.shape[2])  # replaced from outside
                return self.keys.shape[2]

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized or self.keys is None:   # after reset(): start a fresh buffer
                    self.adopt(key_states, value_states, 2 * key_states.shape[2])
                    return self.keys, self.values
                n, s = self._current(), key_states.shape[2]
                if n + s > self._kbuf.shape[2]:
                    self.adopt(self.keys, self.values, max(2 * self._kbuf.shape[2], n + s))
                self._kbuf[:, :, n: n + s].copy_(key_states)
                self._vbuf[:, :, n: n + s].copy_(value_states)
                self._set(n + s)
                return self.keys, self.values

            def batch_select_indices(self, indices: torch.Tensor) -> None:
                # In place: the kept rows move to the front of the buffer, which then narrows to them
                # (no new buffer: a fresh allocation of the whole capacity costs more than the copy).
                n, m = self._current(), indices.shape[0]
                k, v = self.keys.index_select(0, indices), self.values.index_select(0, indices)
                self._kbuf, self._vbuf = self._kbuf[:m], self._vbuf[:m]
                self._kbuf[:, :, :n].copy_(k)
                self._vbuf[:, :, :n].copy_(v)
                self._set(n)

            def gather_slots(self, order: torch.Tensor) -> None:
                """Keep, per row, the slots order[A, M] (in that order), at the front of the buffer."""
                self._current()
                kidx = order[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])
                vidx = order[:, None, :, None].expand(-1, self.values.shape[1], -1, self.values.shape[3])
                k, v = self.keys.gather(2, kidx), self.values.gather(2, vidx)
                M = order.shape[1]
                self._kbuf[:, :, :M].copy_(k)
                self._vbuf[:, :, :M].copy_(v)
                self._set(M)

        _GROWING_LAYER = GrowingLayer
    return _GROWING_LAYER


def _use_growing_layers(cache, extra: int) -> None:
    """Swap each plain full-attention DynamicLayer of a filled cache for a GrowingLayer with room for
    `extra` more slots. Other layer types (sliding window, static, quantized) and older transformers
    caches without .layers are left as they are."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers without cache layers
        return
    cls = _growing_layer_class()
    for i, layer in enumerate(layers):
        if type(layer) is not DynamicLayer or not getattr(layer, "is_initialized", False) or layer.keys is None:
            continue
        if layer.keys.dim() != 4:
            continue
        new = cls()
        new.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in ("keys", "values")})
        new.adopt(layer.keys, layer.values, layer.keys.shape[2] + extra)
        layers[i] = new


# Model types whose transformers (>= 5) forward takes a prepared 4D mask as is, with every layer
# full attention; tested against the 2D path in tests/test_sampling.py. Others get the 2D mask.
_MASK4D_MODEL_TYPES = ("llama", "gemma", "qwen2", "gpt2")


def _mask4d_kind(model) -> str | None:
    """"bool" (sdpa) or "float" (eager, additive) when KVStream may build the 4D attention mask
    itself, else None. transformers rebuilds the 4D mask from the 2D one on every forward (0.25 ms
    a call on CPU, a sixth of a tiny model's decoding step); the slot mask already holds it."""
    try:
        import transformers
        if int(transformers.__version__.split(".")[0]) < 5:
            return None
    except Exception:  # pragma: no cover
        return None
    cfg = model.config
    if getattr(cfg, "model_type", None) not in _MASK4D_MODEL_TYPES:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return None
    if types is None and getattr(cfg, "model_type", None) != "gpt2" and getattr(cfg, "sliding_window", None):
        return None
    impl = getattr(cfg, "_attn_implementation", None)
    return {"sdpa": "bool", "eager": "float"}.get(impl)


class KVStream:
    """One model's incremental view of a ragged batch: KV cache, slot mask, next position per row."""

    def __init__(self, model, vocab_size: int):
        self.model = model
        self.V = vocab_size
        self.device = next(model.parameters()).device
        self.cache = None
        self.slot_mask: torch.Tensor | None = None   # [A, S] int64: 1 valid slot, 0 pad / hole
        self.next_pos: torch.Tensor | None = None    # [A] int64: valid tokens so far
        self._kw = _cache_kwarg(model)
        self._reserve = 0
        self._mask4d = _mask4d_kind(model)
        self._dtype = next(model.parameters()).dtype

    def _run(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        fresh = self.cache is None
        kwargs = {self._kw: self.cache} if not fresh else {}
        mask = self.slot_mask if self._mask4d is None else self._mask_4d(ids.shape[1])
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                         use_cache=True, **kwargs)
        # transformers >= 5.2x names the output `cache` (reading `past_key_values` warns); older: past_key_values.
        self.cache = out["cache"] if "cache" in out else out.past_key_values
        if fresh:  # the model made a DynamicCache: from now on append in place
            _use_growing_layers(self.cache, self._reserve)
        return out.logits[..., : self.V]

    def _mask_4d(self, q: int) -> torch.Tensor:
        """[A, 1, q, S] mask for the q newest slots: valid earlier-or-same slots, and each query's own
        slot (so a hole's or a pad's query row is never fully masked: its output is unused)."""
        S = self.slot_mask.shape[1]
        k_pos = torch.arange(S, device=self.device)
        q_pos = k_pos[S - q:, None]
        m = (self.slot_mask.bool()[:, None, None, :] & (k_pos <= q_pos)) | (k_pos == q_pos)
        if self._mask4d == "bool":
            return m
        return torch.zeros(m.shape, dtype=self._dtype, device=self.device).masked_fill_(
            ~m, torch.finfo(self._dtype).min)

    def prefill(self, rows: list[list[int]], pad_id: int, reserve: int = 0) -> None:
        """Consume each row's tokens (left-padded); rows may be empty. `reserve`: slots to preallocate
        for what follows (the cache still grows past it when needed)."""
        A, P = len(rows), max((len(r) for r in rows), default=0)
        self._reserve = reserve
        self.slot_mask = torch.zeros(A, P, dtype=torch.long, device=self.device)
        self.next_pos = torch.tensor([len(r) for r in rows], dtype=torch.long, device=self.device)
        if P == 0:
            return
        ids = torch.full((A, P), pad_id, dtype=torch.long)
        for a, r in enumerate(rows):
            if r:
                ids[a, P - len(r):] = torch.tensor(r)
                self.slot_mask[a, P - len(r):] = 1
        pos = (self.slot_mask.cumsum(-1) - 1).clamp_(min=0)
        with torch.no_grad():
            self._run(ids.to(self.device), pos)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Append ids[A, S] as slots (all valid, or where valid[A, S]); returns logits[A, S, V]."""
        A, S = ids.shape
        assert self.next_pos.shape[0] == A, f"stream has {self.next_pos.shape[0]} rows, ids {tuple(ids.shape)}"
        if valid is None:
            valid = torch.ones(A, S, dtype=torch.long, device=self.device)
        valid = valid.to(self.device, torch.long)
        pos = self.next_pos[:, None] + (valid.cumsum(1) - 1).clamp_(min=0)
        self.slot_mask = torch.cat([self.slot_mask, valid], 1)
        self.next_pos = self.next_pos + valid.sum(1)
        with torch.no_grad():
            return self._run(ids.to(self.device), pos)

    def invalidate_tail(self, n_bad: torch.Tensor) -> None:
        """Turn the last n_bad[a] slots of each row into holes (rejected draft tokens)."""
        n_bad = n_bad.to(self.device)
        S = self.slot_mask.shape[1]
        bad = torch.arange(S, device=self.device)[None, :] >= (S - n_bad)[:, None]
        self.slot_mask = self.slot_mask.masked_fill(bad, 0)
        self.next_pos = self.next_pos - n_bad

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (indices into the current rows)."""
        keep = keep.to(self.device)
        if self.cache is not None:
            self.cache.batch_select_indices(keep)
        self.slot_mask = self.slot_mask[keep]
        self.next_pos = self.next_pos[keep]

    def maybe_compact(self) -> None:
        """Drop holes once they are most of the cache (only for plain full-attention layers)."""
        S = self.slot_mask.shape[1]
        if self.cache is None or S < 64 or self.slot_mask.shape[0] == 0:
            return
        valid = self.slot_mask.bool()
        M = int(valid.sum(1).max())
        if S < 2 * M:
            return
        layers = getattr(self.cache, "layers", None)
        if not layers or any(getattr(layer, "is_sliding", True) or not hasattr(layer, "keys") for layer in layers):
            return  # sliding-window or unknown cache layout: keep the holes (correct, just slower)
        # Stable sort puts holes first and keeps the valid slots in order at the right (left padding).
        order = torch.sort(valid.to(torch.int8), dim=1, stable=True).indices[:, S - M:]
        for layer in layers:
            if layer.keys is None or layer.keys.numel() == 0:
                continue
            if hasattr(layer, "gather_slots"):
                layer.gather_slots(order)
                continue
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx)
        self.slot_mask = self.slot_mask.gather(1, order)


# --------------------------------------------------------------------------- helpers

def _eos_ids(models, eos_token_id) -> list[int]:
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


class _StopChecker:
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


# --------------------------------------------------------------------------- verification rules

class SkdRule:
    """SKD (SKD_SPEC 2.3-2.5): keep the longest prefix inside the teacher's top-K; the teacher
    samples the token at the first rejection (and the bonus row when keep_bonus)."""

    needs_q = False
    draws_per_round = 1

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg
        self.keep_bonus = cfg.keep_bonus
        self.teacher = dict(temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                            top_k=cfg.teacher_top_k if cfg.semantics == "code" else 0)

    def accept(self, t_logits, draft, draft_len, q, u):
        A, D, V = t_logits.shape[0], draft.shape[1], t_logits.shape[-1]
        test = t_logits[:, :D]
        if self.cfg.semantics == "code":  # released code: test on the processed teacher distribution
            test = process_logits(test, self.cfg.teacher_temperature, self.cfg.teacher_top_k, self.cfg.teacher_top_p)
        if test.dtype == torch.float64:  # the op takes fp32 / bf16 / fp16 (float64 = test models only)
            test = test.float()
        acc = ops.topk_rank_accept(test.reshape(A * D, V), draft.reshape(-1), self.cfg.k)
        return ops.accept_prefix(acc.view(A, D), draft_len)

    def token(self, t_rows, q_rows, rejected, u):
        return sample_tokens(t_rows, u, **self.teacher)


class SpeculativeRule:
    """Speculative decoding (Leviathan et al. 2023): the output follows the teacher's distribution.

    Greedy (temperature 0): accept while the draft equals the teacher's argmax; the teacher's argmax
    follows. Sampling: accept draft token i while u_i < p_i / q_i (op speculative_accept); at the
    first rejection sample from norm(max(0, p - q)); after a full acceptance, from p (bonus)."""

    draws_per_round = None  # set in __init__: D acceptance uniforms + 1 for the correction
    keep_bonus = True

    def __init__(self, temperature: float, top_p: float, gamma: int):
        self.temperature, self.top_p = temperature, top_p
        self.needs_q = temperature > 0
        self.draws_per_round = gamma + 1

    def _probs(self, logits):
        return torch.softmax(process_logits(logits, self.temperature, 0, self.top_p), dim=-1)

    def accept(self, t_logits, draft, draft_len, q, u):
        D = draft.shape[1]
        if self.temperature == 0:
            acc = draft == t_logits[:, :D].argmax(-1)
            return ops.accept_prefix(acc, draft_len)
        p = self._probs(t_logits)                                   # [A, D + 1, V]
        n = ops.speculative_accept(p, q, draft, u[:, :D].to(p.dtype))
        return torch.minimum(n, draft_len)

    def token(self, t_rows, q_rows, rejected, u):
        if self.temperature == 0:
            return t_rows.argmax(-1)
        p = self._probs(t_rows)
        resid = (p - q_rows).clamp_(min=0)
        # p == q makes the residual vanish; rejection is then impossible, but keep p as a safe fallback.
        resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p)
        dist = torch.where(rejected[:, None], resid, p)
        cdf = dist.cumsum(-1)
        target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=t_rows.shape[-1] - 1)


# --------------------------------------------------------------------------- the sampler

def sample(teacher, student, prompt_ids: list[list[int]], cfg: SampleConfig, *,
           student_generator: torch.Generator | None = None,
           teacher_generator: torch.Generator | None = None,
           tokenizer=None, eos_token_id=None, pad_token_id: int | None = None,
           vocab_size: int | None = None, rule=None) -> Samples:
    """Sample one response per prompt (ragged lists of token ids, no padding). See module doc.

    `rule` replaces the SKD verification rule (skd.core.speculative passes SpeculativeRule)."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise SkdError("every prompt needs at least one token", "check the prompt template / tokenizer")
    mode = cfg.mode
    if mode in ("skd", "teacher") and teacher is None:
        raise SkdError(f"sampling mode {mode!r} needs a teacher model", "pass --teacher")
    if mode in ("skd", "student") and student is None:
        raise SkdError(f"sampling mode {mode!r} needs a student model", "pass --student")
    if cfg.stop_strings and tokenizer is None:
        raise SkdError("stop strings need the tokenizer", "pass tokenizer= to sample()")
    models = [m for m in (teacher, student) if m is not None]
    if vocab_size is None:
        vocab_size = len(tokenizer) if tokenizer is not None else min(m.config.vocab_size for m in models)
    eos = _eos_ids(models, eos_token_id)
    if pad_token_id is None:  # the pad id only fills unused slots; any valid id will do
        candidates = [getattr(tokenizer, "pad_token_id", None)] + [m.config.pad_token_id for m in models] + eos
        pad_token_id = next((int(c) for c in candidates if isinstance(c, int) and 0 <= c < vocab_size), 0)
    stopper = _StopChecker(tokenizer, cfg.stop_strings) if cfg.stop_strings else None

    B, R, V = len(prompt_ids), cfg.max_new_tokens, vocab_size
    P = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    L = int(P.max()) + R
    # Book-keeping lives on the CPU: it is tiny and the splice op runs there without device syncs.
    seq = torch.full((B, L), pad_token_id, dtype=torch.long)
    prov = torch.zeros(B, L, dtype=torch.int8)
    for b, p in enumerate(prompt_ids):
        seq[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        prov[b, : len(p)] = PROV_PROMPT
    length = P.clone()
    finished = torch.zeros(B, dtype=torch.bool)
    eos_t = torch.tensor(eos, dtype=torch.long)
    splice_eos = eos[0] if len(eos) == 1 else -1  # several EOS ids: detected below instead

    keep_t = cfg.keep_teacher_logits and mode in ("skd", "teacher")
    t_dev = next(teacher.parameters()).device if teacher is not None else None
    t_logits_buf = (torch.zeros(B, R, V, dtype=next(teacher.parameters()).dtype, device=t_dev)
                    if keep_t else None)

    streams = {}
    if mode in ("skd", "student"):
        streams["s"] = KVStream(student, V)
        streams["s"].prefill([p[:-1] for p in prompt_ids], pad_token_id, reserve=R + cfg.gamma + 1)
    if mode in ("skd", "teacher"):
        streams["t"] = KVStream(teacher, V)
        streams["t"].prefill([p[:-1] for p in prompt_ids], pad_token_id, reserve=R + cfg.gamma + 1)
    pend = torch.tensor([p[-1] for p in prompt_ids], dtype=torch.long)  # last committed token, not yet consumed
    # A fully accepted draft followed by a bonus token leaves the last draft token unseen by the
    # student (it drafts D tokens from D forwards); it is fed, with the bonus, in the next round.
    s_extra = torch.full((B,), -1, dtype=torch.long)
    active = torch.arange(B)
    proposed = accepted = replaced = rounds = row_rounds = 0

    if mode == "teacher":
        st = dict(temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                  top_k=cfg.teacher_top_k if cfg.semantics == "code" else 0)
    elif mode == "student" or cfg.semantics == "paper":
        st = dict(temperature=cfg.student_temperature, top_p=cfg.student_top_p, top_k=0)
    else:  # code semantics: the released code drafts with the teacher's generation settings
        st = dict(temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p, top_k=cfg.teacher_top_k)
    rule = rule if rule is not None else SkdRule(cfg)

    while active.numel() > 0:
        rounds += 1
        A = active.numel()
        row_rounds += A
        resp_len = (length - P)[active]
        remaining = R - resp_len

        if mode in ("student", "teacher"):
            s = streams["s" if mode == "student" else "t"]
            gen = student_generator if mode == "student" else teacher_generator
            logits = s.forward(pend[:, None])[:, -1]
            tok = sample_tokens(logits, _draw(gen, B, active, s.device), **st).cpu()
            draft = torch.full((B, 1), pad_token_id, dtype=torch.long)
            n_full = torch.zeros(B, dtype=torch.long)
            rep_full = torch.full((B,), -1, dtype=torch.long)
            if mode == "student":
                draft[active, 0] = tok
                n_full[active] = 1
            else:
                rep_full[active] = tok
                if keep_t:
                    t_logits_buf[active.to(t_dev), resp_len.to(t_dev)] = logits.to(t_logits_buf.dtype)
            ops.splice(seq, length, draft, n_full, rep_full, prov, finished, splice_eos)
            pend = tok
            new_tokens = torch.ones(A, dtype=torch.long)
        else:
            # ---- 1. draft: the student proposes up to D tokens per row (SKD_SPEC 2.1)
            s_stream, t_stream = streams["s"], streams["t"]
            D = cfg.gamma
            draft = torch.full((A, D), pad_token_id, dtype=torch.long, device=s_stream.device)
            draft_len = torch.full((A,), D, dtype=torch.long, device=s_stream.device)
            ended = torch.zeros(A, dtype=torch.bool, device=s_stream.device)
            rem_s = remaining.to(s_stream.device)
            eos_s = eos_t.to(s_stream.device)
            cur = pend.to(s_stream.device)
            D_eff = 0
            q = (torch.zeros(A, D, V, dtype=torch.float32, device=s_stream.device) if rule.needs_q else None)
            for j in range(D):
                if j == 0 and bool((s_extra >= 0).any()):
                    two = torch.stack([s_extra.clamp(min=0), pend], 1)
                    valid = torch.stack([s_extra >= 0, torch.ones_like(s_extra, dtype=torch.bool)], 1)
                    logits = s_stream.forward(two.to(s_stream.device), valid)[:, -1]
                else:
                    logits = s_stream.forward(cur[:, None])[:, -1]
                tok = sample_tokens(logits, _draw(student_generator, B, active, s_stream.device), **st)
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
            draft = draft[:, :D_eff]

            # ---- 2. verify: one teacher pass over [last committed token, draft] (SKD_SPEC 2.2)
            t_in = torch.cat([pend.to(t_dev)[:, None], draft.to(t_dev)], 1)
            t_logits = t_stream.forward(t_in)                      # [A, D_eff + 1, V]

            # ---- 3. acceptance: the longest accepted prefix of the draft (SKD_SPEC 2.3)
            u = torch.stack([_draw(teacher_generator, B, active, t_dev) for _ in range(rule.draws_per_round)], 1)
            q = q[:, :D_eff].to(t_dev) if q is not None else None
            n = rule.accept(t_logits, draft.to(t_dev), draft_len.to(t_dev), q, u).cpu()
            draft_len, ended, draft = draft_len.cpu(), ended.cpu(), draft.cpu()

            # ---- 4./5. teacher token at the first rejection, or the bonus row on full acceptance
            full = n == draft_len
            need_tok = ~full | (~ended & rule.keep_bonus)           # 2.6: an ended, accepted draft gets none
            row = torch.where(full, torch.full_like(n, D_eff), n)   # t_logits row to sample from
            ar = torch.arange(A)
            q_rows = q[ar.to(t_dev), row.clamp(max=D_eff - 1).to(t_dev)] if q is not None else None
            t_tok = rule.token(t_logits[ar.to(t_dev), row.to(t_dev)], q_rows, (~full).to(t_dev), u[:, -1]).cpu()
            replacement = torch.where(need_tok, t_tok, torch.full_like(t_tok, -1))

            if keep_t:
                J = torch.arange(D_eff + 1)[None, :]
                take = (J < n[:, None]) | ((J == n[:, None]) & need_tok[:, None])
                rows_b = active[:, None].expand(A, D_eff + 1)[take]
                dest = (resp_len[:, None] + J).expand(A, D_eff + 1)[take]
                t_logits_buf[rows_b.to(t_dev), dest.to(t_dev)] = t_logits[take.to(t_dev)].to(t_logits_buf.dtype)

            d_full = torch.full((B, D_eff), pad_token_id, dtype=torch.long)
            d_full[active] = draft
            n_full = torch.zeros(B, dtype=torch.long)
            n_full[active] = n
            rep_full = torch.full((B,), -1, dtype=torch.long)
            rep_full[active] = replacement
            ops.splice(seq, length, d_full, n_full, rep_full, prov, finished, splice_eos)

            proposed += int(draft_len.sum())
            accepted += int(n.sum())
            replaced += int((~full).sum())
            new_tokens = n + need_tok.long()
            # Next round starts from the last committed token, which neither cache may hold yet.
            last_draft = draft[ar, (n - 1).clamp(min=0)]
            pend = torch.where(need_tok, t_tok, last_draft)
            s_valid = 1 + torch.minimum(n, torch.full_like(n, D_eff - 1))
            s_stream.invalidate_tail(D_eff - s_valid)
            t_valid = 1 + n - (~need_tok).long()  # the accepted last draft token is re-fed next round
            t_stream.invalidate_tail(D_eff + 1 - t_valid)
            s_extra = torch.where(full & need_tok, draft[:, D_eff - 1], torch.full_like(n, -1))

        # ---- end of round: EOS, stop strings, budget
        new_len = length[active]
        last = seq[active, (new_len - 1).clamp(min=0)]
        done = torch.isin(last, eos_t) | (new_len - P[active] >= R)
        if stopper is not None:
            for a in range(A):
                b = int(active[a])
                if finished[b] or done[a]:
                    continue
                resp = seq[b, int(P[b]): int(new_len[a])].tolist()
                cut = stopper.cut(resp, len(resp) - int(new_tokens[a]))
                if cut is not None:
                    end = int(P[b]) + cut
                    seq[b, end:] = pad_token_id
                    prov[b, end:] = PROV_PAD
                    length[b] = end
                    done[a] = True
        finished[active] |= done
        keep = (~finished[active]).nonzero().squeeze(1)
        if keep.numel() < A:
            for s in streams.values():
                s.select(keep)
            pend = pend[keep]
            s_extra = s_extra[keep]
            active = active[keep]
        for s in streams.values():
            s.maybe_compact()

    Lmax = int(length.max())
    pos = torch.arange(Lmax)[None, :]
    attn = (pos < length[:, None]).long()
    resp_mask = attn.bool() & (pos >= P[:, None])
    generated = int((length - P).sum())
    if mode == "teacher":
        replaced = generated
    return Samples(tokens=seq[:, :Lmax].contiguous(), attention_mask=attn, response_mask=resp_mask,
                   provenance=prov[:, :Lmax].contiguous(), prompt_lengths=P, lengths=length.clone(),
                   teacher_logits=t_logits_buf, proposed=proposed, accepted=accepted, replaced=replaced,
                   generated=generated, rounds=rounds, row_rounds=row_rounds)

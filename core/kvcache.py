"""The transformers-facing KV-cache machinery of the sampler: all that leans on transformers internals.

Public: KVStream (forward(..., head=False): the output layer put off, skd.core.split_head; forward_rows: a
pass over some rows only);
cache_kwarg(model), returned_cache(out); use_growing_layers(cache, extra) and growing_layer_class()
(the in-place cache); mask4d_kind(model) (the prepared 4D mask); grouped_query_attention(device)
(CPU attention without repeated key/value heads);
SUPPORTED_TRANSFORMERS; FastPathOff, the warning a fast path gives (once per process and reason)
when a guard turns it off: sampling falls back to transformers' own path, same tokens, slower.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import os
import re
import warnings

import torch

from skd.core.decode_linear import DecodeLinears
from skd.core.position_logits import keeps_positions
from skd.core.split_head import PositionLogits, split_head

__all__ = ["KVStream", "cache_kwarg", "returned_cache", "use_growing_layers", "growing_layer_class",
           "mask4d_kind", "grouped_query_attention", "SUPPORTED_TRANSFORMERS", "FastPathOff"]

# The transformers releases [first, end) whose cache internals (DynamicLayer, config._attn_implementation,
# forwards that take a prepared 4D mask) the fast paths are written against; tested on 5.17 (the GPU
# machines) and 5.24 (CPU). Outside the range both fast paths stand aside.
SUPPORTED_TRANSFORMERS = ((5, 0), (6, 0))

# Model types whose forward takes a prepared 4D mask as is, with every layer full attention; tested
# against the 2D path in tests/test_sampling.py. Others get the 2D mask.
_MASK4D_MODEL_TYPES = ("llama", "gemma", "qwen2", "gpt2")

_INPLACE = "in-place KV cache"
_MASK4D = "prepared 4D attention mask"
_COMPACT = "KV cache hole compaction"
_CONSEQUENCE = {
    _INPLACE: "every forward copies the whole cache, as transformers' DynamicLayer does",
    _MASK4D: "transformers rebuilds the 4D mask from the 2D one on every forward",
    _COMPACT: "the slots of rejected draft tokens stay in the cache as masked holes",
}


class FastPathOff(RuntimeWarning):
    """A KV-cache fast path stood aside: sampling stays correct (same tokens), only slower."""


_noticed: set[tuple[str, str]] = set()


def _notice_off(path: str, reason: str) -> None:
    """Warn once per process and (fast path, reason) that `path` is off, why, and what it costs."""
    if (path, reason) in _noticed:
        return
    _noticed.add((path, reason))
    warnings.warn(f"skd: {path} off: {reason}; sampling stays correct but slower ({_CONSEQUENCE[path]}).",
                  FastPathOff, stacklevel=3)


def _unsupported_transformers() -> str | None:
    """Why the installed transformers is outside SUPPORTED_TRANSFORMERS, or None when inside."""
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_TRANSFORMERS
    try:
        import transformers
        version = transformers.__version__
        m = re.match(r"(\d+)\.(\d+)", version)
        parsed = (int(m[1]), int(m[2]))
    except Exception:  # pragma: no cover - no transformers, or an unreadable version string
        return "the transformers version could not be read"
    if (lo_major, lo_minor) <= parsed < (hi_major, hi_minor):
        return None
    return (f"transformers {version} is outside the tested range >= {lo_major}.{lo_minor}, "
            f"< {hi_major}.{hi_minor}")


# --------------------------------------------------------------------------- cache keyword

def cache_kwarg(model) -> str:
    """The keyword under which model's forward takes its KV cache: "cache" (newer) or "past_key_values"."""
    model = getattr(model, "skd_inner", model)      # distributed.LockstepStudent: the model it runs
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned: `cache` in newer transformers (reading `past_key_values` warns)."""
    return out["cache"] if "cache" in out else out.past_key_values


# --------------------------------------------------------------------------- in-place cache layer

_GROWING_LAYER = None


def growing_layer_class():
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

            def rows_copy(self, indices: torch.Tensor, capacity: int) -> "GrowingLayer":
                """A new layer holding copies of rows `indices`, with room for `capacity` slots."""
                part = type(self)()
                part.__dict__.update({k: v for k, v in self.__dict__.items()
                                      if k not in ("keys", "values", "_kbuf", "_vbuf", "_views")})
                self._current()
                part.adopt(self.keys.index_select(0, indices), self.values.index_select(0, indices), capacity)
                return part

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


def use_growing_layers(cache, extra: int) -> None:
    """Swap each plain full-attention DynamicLayer of a filled cache for a GrowingLayer with room for
    `extra` more slots. Other layer types (sliding window, static, quantized) are left as they are,
    and so is every layer under a transformers outside SUPPORTED_TRANSFORMERS (with a notice)."""
    unsupported = _unsupported_transformers()
    if unsupported is not None:
        _notice_off(_INPLACE, unsupported)
        return
    layers = getattr(cache, "layers", None)
    if not layers:
        _notice_off(_INPLACE, f"the model's cache ({type(cache).__name__}) has no cache layers")
        return
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers without cache layers
        _notice_off(_INPLACE, "transformers.cache_utils has no DynamicLayer")
        return
    cls = growing_layer_class()
    for i, layer in enumerate(layers):
        if type(layer) is not DynamicLayer:
            if not isinstance(layer, cls):
                _notice_off(_INPLACE, f"cache layers of type {type(layer).__name__} are kept as they are")
            continue
        if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.dim() != 4:
            _notice_off(_INPLACE, "a DynamicLayer left unfilled by the first forward is kept as it is")
            continue
        new = cls()
        new.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in ("keys", "values")})
        new.adopt(layer.keys, layer.values, layer.keys.shape[2] + extra)
        layers[i] = new


# --------------------------------------------------------------------------- prepared 4D mask

def mask4d_kind(model) -> str | None:
    """"bool" (sdpa) or "float" (eager, additive) when KVStream may build the 4D attention mask
    itself, else None (with a notice). transformers rebuilds the 4D mask from the 2D one on every
    forward (0.25 ms a call on CPU, a sixth of a tiny model's decoding step); the slot mask holds it."""
    unsupported = _unsupported_transformers()
    if unsupported is not None:
        _notice_off(_MASK4D, unsupported)
        return None
    cfg = model.config
    model_type = getattr(cfg, "model_type", None)
    if model_type not in _MASK4D_MODEL_TYPES:
        _notice_off(_MASK4D, f"model type {model_type!r} is not among the tested {', '.join(_MASK4D_MODEL_TYPES)}")
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        _notice_off(_MASK4D, f"model type {model_type!r} has layers other than full attention")
        return None
    if types is None and model_type != "gpt2" and getattr(cfg, "sliding_window", None):
        _notice_off(_MASK4D, f"model type {model_type!r} has a sliding window")
        return None
    impl = getattr(cfg, "_attn_implementation", None)
    kind = {"sdpa": "bool", "eager": "float"}.get(impl)
    if kind is None:
        _notice_off(_MASK4D, f"attention implementation {impl!r} is neither sdpa nor eager")
    return kind


# --------------------------------------------------------------------------- grouped-query attention

# transformers' sdpa attention, given a mask, repeats a grouped-query model's key/value heads once per
# query head before every multi-position call (one-position calls fold the query heads instead), unless
# this variable is "1": then torch's kernel takes the groups itself (`enable_gqa`). On the CPU that is
# the repeat's result bit for bit and 2-3x faster (32 rows, 9 query / 3 key-value heads, 5 queries over
# 150-300 slots: 3.6 -> 1.8 ms a call); one-position calls move from the folded queries to the same
# kernel (within 2e-7 of them). transformers keeps the repeat by default for CUDA, whose masked GQA
# falls back to a slow kernel. A transformers that does not read the variable keeps the repeat.
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def grouped_query_attention(device: torch.device):
    """Within the block, CPU sdpa attention takes grouped key/value heads as they are (see _FORCE_GQA);
    elsewhere, or where the variable is already set, nothing changes."""
    if device.type != "cpu" or _FORCE_GQA in os.environ:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


# --------------------------------------------------------------------------- the stream

class KVStream:
    """One model's incremental view of a ragged batch: KV cache, slot mask, next position per row.

    Ragged rows share one cache without per-row cropping: every forward appends the same number of
    slots to every row; the slots of rejected draft tokens become holes masked out of attention, and
    positions are passed explicitly (valid tokens before a slot), so holes change no position."""

    def __init__(self, model, vocab_size: int):
        self.model = model
        self.V = vocab_size
        self.device = next(model.parameters()).device
        self.cache = None
        self.slot_mask: torch.Tensor | None = None   # [A, S] int64: 1 valid slot, 0 pad / hole
        self.next_pos: torch.Tensor | None = None    # [A] int64: valid tokens so far
        self._kw = cache_kwarg(model)
        self._reserve = 0
        self._mask4d = mask4d_kind(model)
        self._dtype = next(model.parameters()).dtype
        self._keeps_positions = keeps_positions(model)
        self._linears = DecodeLinears(model)  # few-row passes: the CPU rows kernel (decode_linear)
        self._split = split_head(model)       # body + output layer, for passes that put off the latter
        self._body_kw = cache_kwarg(self._split.body) if self._split is not None else None

    @property
    def defers_head(self) -> bool:
        """Whether forward(..., head=False) returns hidden states with the output layer put off."""
        return self._split is not None

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._linears.active():
            return self._split.head(h)[..., : self.V]

    def _run(self, ids: torch.Tensor, position_ids: torch.Tensor, *, logits: bool = True,
             head: bool = True):
        fresh = self.cache is None
        mask = self.slot_mask if self._mask4d is None else self._mask_4d(ids.shape[1])
        if head:
            model, kwargs = self.model, ({self._kw: self.cache} if not fresh else {})
            if not logits and self._keeps_positions:
                # Only the cache is wanted: the output layer runs on the last column alone. On a prompt of
                # P tokens over a large vocabulary it is otherwise most of the pass (SmolLM2-135M: a
                # 576 x 49,152 product per prompt token, 3.1 s of a 4.5 s 32-row sampling call on 2 cores).
                kwargs["logits_to_keep"] = 1
        else:   # the body alone: its hidden states go to PositionLogits, the output layer waits
            model, kwargs = self._split.body, ({self._body_kw: self.cache} if not fresh else {})
        with self._linears.active(), grouped_query_attention(self.device):
            out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **kwargs)
        self.cache = returned_cache(out)
        if fresh:  # the model made a DynamicCache: from now on append in place
            use_growing_layers(self.cache, self._reserve)
        if not head:
            return PositionLogits(out.last_hidden_state, self._head)
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
            self._run(ids.to(self.device), pos, logits=False)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor | None = None, *, head: bool = True):
        """Append ids[A, S] as slots (all valid, or where valid[A, S]); returns logits[A, S, V], or with
        head=False (only where defers_head) a PositionLogits: the output layer on demand."""
        if not head and not self.defers_head:
            raise ValueError("this model's output layer cannot be put off (KVStream.defers_head is False)")
        A, S = ids.shape
        assert self.next_pos.shape[0] == A, f"stream has {self.next_pos.shape[0]} rows, ids {tuple(ids.shape)}"
        if valid is None:
            valid = torch.ones(A, S, dtype=torch.long, device=self.device)
        valid = valid.to(self.device, torch.long)
        pos = self.next_pos[:, None] + (valid.cumsum(1) - 1).clamp_(min=0)
        self.slot_mask = torch.cat([self.slot_mask, valid], 1)
        self.next_pos = self.next_pos + valid.sum(1)
        with torch.no_grad():
            return self._run(ids.to(self.device), pos, head=head)

    def forward_rows(self, rows: torch.Tensor, ids: torch.Tensor, *, head: bool = True):
        """Append ids[m, S] as slots of the rows `rows` (indices into the current rows) and S holes to
        every other row; only the m rows are computed. Returns logits [m, S, V], or with head=False a
        PositionLogits over the m rows.

        A pass's cost grows with its rows x positions, so a caller that needs the later positions of a
        few rows only (the sampler's staged verification) runs those alone. Their cache rows are copied
        out, extended by the pass and written back into the S new slots; where the cache is not made of
        in-place layers (kvcache.use_growing_layers stood aside) the pass runs over every row with the
        others' slots masked instead: same logits, the cost of a whole pass."""
        A, (m, S) = self.next_pos.shape[0], ids.shape
        rows = rows.to(self.device)
        layers = getattr(self.cache, "layers", None)
        if not layers or not all(isinstance(layer, growing_layer_class()) for layer in layers):
            full = torch.zeros(A, S, dtype=ids.dtype, device=self.device)
            full[rows] = ids.to(self.device)
            valid = torch.zeros(A, S, dtype=torch.long, device=self.device)
            valid[rows] = 1
            out = self.forward(full, valid, head=head)
            return out[rows] if head else PositionLogits(out.hidden[rows], self._head)
        n = layers[0].keys.shape[2]
        state = (self.cache, self.slot_mask, self.next_pos)
        sub = copy.copy(self.cache)
        sub.layers = [layer.rows_copy(rows, n + S) for layer in layers]
        self.cache, self.slot_mask, self.next_pos = sub, self.slot_mask[rows], self.next_pos[rows]
        try:
            out = self.forward(ids, head=head)
            sub_mask, sub_pos = self.slot_mask, self.next_pos
        finally:
            self.cache, self.slot_mask, self.next_pos = state
        k0, v0 = layers[0].keys, layers[0].values   # full-attention layers: one shape for all
        blank_k = k0.new_zeros(A, k0.shape[1], S, k0.shape[3])
        blank_v = v0.new_zeros(A, v0.shape[1], S, v0.shape[3])
        for layer, part in zip(layers, sub.layers):   # S new slots for every row, the m rows' filled in
            layer.update(blank_k, blank_v)
            layer.keys[rows, :, n:] = part.keys[:, :, n:]
            layer.values[rows, :, n:] = part.values[:, :, n:]
        new_mask = torch.zeros(A, S, dtype=self.slot_mask.dtype, device=self.device)
        new_mask[rows] = sub_mask[:, -S:]
        self.slot_mask = torch.cat([self.slot_mask, new_mask], 1)
        self.next_pos = self.next_pos.clone()
        self.next_pos[rows] = sub_pos
        return out

    def invalidate_tail(self, n_bad: torch.Tensor) -> None:
        """Turn the last n_bad[a] slots of each row into holes (rejected draft tokens); slots that are
        holes already (forward_rows' for the rows it did not compute) stay holes."""
        n_bad = n_bad.to(self.device)
        S = self.slot_mask.shape[1]
        bad = torch.arange(S, device=self.device)[None, :] >= (S - n_bad)[:, None]
        self.next_pos = self.next_pos - (self.slot_mask * bad).sum(1)
        self.slot_mask = self.slot_mask.masked_fill(bad, 0)

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
            # Sliding-window or unknown cache layout: keep the holes (correct, just slower).
            _notice_off(_COMPACT, f"the cache ({type(self.cache).__name__}) has sliding-window or "
                                  "unknown layers")
            return
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

"""Sparse teacher targets: the teacher's top-N log-probabilities per position plus one tail bucket.

Public: SparseTeacher (frozen dataclass; from_logits, zeros, cat, slicing, .to(device), in_topk).

Instead of V logits per position the loss keeps N log-probabilities, their token ids and the log of
the probability mass left over (the tail), N + 1 values and N ids per position: the top-k + tail
scheme of TRL's server-side distillation, verl and NeMo RL (our own implementation). The loss
(skd.core.losses) collapses the student's distribution onto the same N + 1 buckets. N >= V keeps
every token and leaves an empty tail (-inf): the bucketed divergence is then the full one.

A SparseTeacher has leading position dimensions [...] like dense logits [..., V] without V:
`shape` is that leading shape, and indexing (`st[a:b]`, `st[mask]`, `st[:, :R]`) applies to the
leading dimensions of all three tensors at once, as it would to dense logits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

# Rows converted at once by from_logits: bounds its [rows, V] fp32 temporaries to ~8 MiB at V = 256,000.
_CONVERT_ELEMENTS = 1 << 21


@dataclass(frozen=True, eq=False)  # eq: tensors have no single truth value
class SparseTeacher:
    """The teacher's top-N log-probs per position and the log of the remaining mass.

    logprobs [..., N] float: log p of the kept tokens (largest first), at `temperature`;
    indices [..., N] int32: their token ids in [0, vocab_size);
    tail_logprob [...] float: log(1 - sum of the kept probabilities), -inf when nothing is left;
    vocab_size: V of the dense logits they came from; temperature: the logits were divided by it.
    """

    logprobs: torch.Tensor
    indices: torch.Tensor
    tail_logprob: torch.Tensor
    vocab_size: int
    temperature: float = 1.0

    # ------------------------------------------------------------------ construction

    @classmethod
    @torch.no_grad()
    def from_logits(cls, logits: torch.Tensor, n: int, temperature: float = 1.0) -> "SparseTeacher":
        """Top-n of log_softmax(logits / temperature) over the last dimension, and the tail bucket.

        Computed in fp32 (fp64 stays fp64), in row chunks. The tail is the logsumexp of the tokens
        NOT kept, not log1mexp(logsumexp(kept)): 1 - sum(kept) cancels catastrophically when the
        tail holds less than ~1e-7 of the mass, the direct sum never does. n >= V keeps every token
        (ordered by probability) with an empty tail, -inf.
        """
        V = logits.shape[-1]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        lead = logits.shape[:-1]
        k = min(n, V)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        flat = logits.detach().reshape(-1, V)
        rows = flat.shape[0]
        lp_out = torch.empty(rows, k, dtype=dtype, device=logits.device)
        idx_out = torch.empty(rows, k, dtype=torch.int32, device=logits.device)
        tail_out = torch.full((rows,), -torch.inf, dtype=dtype, device=logits.device)
        step = max(1, _CONVERT_ELEMENTS // max(1, V))
        for lo in range(0, rows, step):
            x = flat[lo: lo + step].to(dtype)
            if temperature != 1.0:
                x = x / temperature
            lp = torch.log_softmax(x, dim=-1)
            vals, idx = lp.topk(k, dim=-1)
            lp_out[lo: lo + step] = vals
            idx_out[lo: lo + step] = idx.to(torch.int32)
            if k < V:
                tail_out[lo: lo + step] = lp.scatter_(-1, idx, -torch.inf).logsumexp(-1)
        return cls(lp_out.reshape(*lead, k), idx_out.reshape(*lead, k), tail_out.reshape(lead), V,
                   float(temperature))

    @classmethod
    def zeros(cls, *lead: int, n: int, vocab_size: int, temperature: float = 1.0, dtype=torch.float32,
              device=None) -> "SparseTeacher":
        """An all-zero buffer of leading shape `lead` to be filled by item assignment."""
        return cls(torch.zeros(*lead, n, dtype=dtype, device=device),
                   torch.zeros(*lead, n, dtype=torch.int32, device=device),
                   torch.zeros(*lead, dtype=dtype, device=device), vocab_size, float(temperature))

    def new_zeros(self, *lead: int) -> "SparseTeacher":
        """An all-zero buffer like this one (same N, V, temperature, dtype, device), of leading shape `lead`."""
        return SparseTeacher.zeros(*lead, n=self.num_kept, vocab_size=self.vocab_size,
                                   temperature=self.temperature, dtype=self.logprobs.dtype, device=self.device)

    @staticmethod
    def cat(parts: "list[SparseTeacher]") -> "SparseTeacher":
        """Concatenate along the first position dimension (like torch.cat of dense logits)."""
        first = parts[0]
        for p in parts[1:]:
            if (p.num_kept, p.vocab_size, p.temperature) != (first.num_kept, first.vocab_size, first.temperature):
                raise ValueError("SparseTeacher.cat: parts differ in N, vocabulary size or temperature")
        return dataclasses.replace(first, logprobs=torch.cat([p.logprobs for p in parts]),
                                   indices=torch.cat([p.indices for p in parts]),
                                   tail_logprob=torch.cat([p.tail_logprob for p in parts]))

    # ------------------------------------------------------------------ tensor-like access

    @property
    def shape(self) -> torch.Size:
        """The leading (position) shape: that of dense logits without the vocabulary dimension."""
        return self.tail_logprob.shape

    @property
    def num_kept(self) -> int:
        """N, the kept log-probabilities per position."""
        return self.logprobs.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.logprobs.device

    @property
    def dtype(self) -> torch.dtype:
        return self.logprobs.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held: values + indices + tail."""
        return sum(t.numel() * t.element_size() for t in (self.logprobs, self.indices, self.tail_logprob))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> "SparseTeacher":
        return dataclasses.replace(self, logprobs=self.logprobs[key], indices=self.indices[key],
                                   tail_logprob=self.tail_logprob[key])

    def __setitem__(self, key, value: "SparseTeacher") -> None:
        if (value.num_kept, value.vocab_size, value.temperature) != (self.num_kept, self.vocab_size,
                                                                     self.temperature):
            raise ValueError("SparseTeacher assignment: the value differs in N, vocabulary size or temperature")
        self.logprobs[key] = value.logprobs.to(self.logprobs.dtype)
        self.indices[key] = value.indices
        self.tail_logprob[key] = value.tail_logprob.to(self.tail_logprob.dtype)

    def to(self, device) -> "SparseTeacher":
        return dataclasses.replace(self, logprobs=self.logprobs.to(device), indices=self.indices.to(device),
                                   tail_logprob=self.tail_logprob.to(device))

    def flatten(self) -> "SparseTeacher":
        """The positions as one dimension: logprobs / indices [P, N], tail [P]."""
        return dataclasses.replace(self, logprobs=self.logprobs.reshape(-1, self.num_kept),
                                   indices=self.indices.reshape(-1, self.num_kept),
                                   tail_logprob=self.tail_logprob.reshape(-1))

    def in_topk(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """bool [...]: whether tokens [...] is among the teacher's k most likely tokens, for k <= N.

        The rank test of skd.core.ops.topk_rank_accept (fewer than k tokens strictly more likely; ties
        at the k-th value inside), read from the kept tokens: for a kept token every more likely token
        is kept too, so its rank is exact; a token not kept has at least N >= k more likely ones (up
        to an exact tie with the N-th kept value, which torch.topk broke against it). Ranks do not
        depend on the temperature the log-probs were taken at.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.num_kept:
            raise ValueError(f"in_topk needs 0 <= k <= N = {self.num_kept} kept tokens, got k={k!r}")
        hit = self.indices.long() == tokens.long()[..., None]                       # [..., N]
        x = torch.where(hit, self.logprobs, -torch.inf).amax(-1, keepdim=True)      # the token's log-prob
        n_greater = (self.logprobs > x).sum(-1)
        return hit.any(-1) & torch.isfinite(x.squeeze(-1)) & (n_greater < k)

    def bucket_logprobs(self) -> torch.Tensor:
        """[..., N + 1]: the kept log-probs, then the tail's (a distribution over N + 1 buckets)."""
        return torch.cat([self.logprobs, self.tail_logprob[..., None]], dim=-1)

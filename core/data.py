"""Training data: task examples as token ids, and the deterministic order they are trained in.

Public: TokenizedExample (prompt ids + ground-truth response ids); tokenize_examples(examples,
tokenizer, render_prompt, max_length=None) -> list[TokenizedExample]; ExampleStream (the endless,
seeded, resumable stream of example indices, optionally grouped by length).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from skd.core.errors import SkdError


@dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: list[int]
    response_ids: list[int]   # ground-truth response, EOS appended


def tokenize_examples(examples, tokenizer, render_prompt: Callable, *, max_length: int | None = None):
    """Prompt text -> ids through the chat template; response ids + EOS."""
    out = []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SkdError("the tokenizer has no EOS token", "use a tokenizer with an eos_token")
    templated = bool(getattr(tokenizer, "chat_template", None))
    for ex in examples:
        text = render_prompt(ex, tokenizer)
        # A rendered chat template already carries BOS and friends.
        p = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        r = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [eos]
        if not p:
            raise SkdError("a prompt tokenised to zero tokens", "check the data's prompt field")
        if max_length is not None and len(p) >= max_length:
            raise SkdError(f"a prompt has {len(p)} tokens, the model's context is {max_length}",
                           "shorten the prompts (or filter the data), or use a model with a longer context")
        out.append(TokenizedExample(p, r))
    return out


class ExampleStream:
    """Deterministic endless stream over the examples: a fresh seeded permutation per epoch.

    With `lengths` and `batch` (group by length), each epoch's permutation is cut into pools of
    GROUP_POOL batches, each pool is sorted by length and cut into batches, and the batches of the
    epoch are put in a seeded random order: every batch holds similar lengths (padding in a random
    batch of 32 `arith` examples is ~30% of the tokens), while which examples meet and the batch
    order stay random. The order depends only on (seed, epoch), so resume is exact.

    `cursor` counts the examples handed out (the data position saved in checkpoints)."""

    GROUP_POOL = 50

    def __init__(self, n: int, seed: int, lengths: list[int] | None = None, batch: int = 0):
        self.n, self.seed = n, seed
        self.lengths, self.batch = lengths, batch
        self.cursor = 0
        self._perm: tuple[int, list[int]] | None = None   # (epoch, permutation): one epoch cached

    def order(self, epoch: int) -> list[int]:
        """The example indices of one epoch, in training order (seeded by seed and epoch only)."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None and self.batch > 1:
                pool = self.batch * self.GROUP_POOL
                batches = []
                for i in range(0, self.n, pool):
                    part = sorted(perm[i: i + pool], key=lambda j: self.lengths[j])   # stable
                    batches += [part[j: j + self.batch] for j in range(0, len(part), self.batch)]
                order = torch.randperm(len(batches), generator=g).tolist()
                # a short batch (a pool's remainder) goes last, so the stream's batches stay aligned
                order.sort(key=lambda b: len(batches[b]) < self.batch)
                perm = [j for b in order for j in batches[b]]
            self._perm = (epoch, perm)
        return self._perm[1]

    def next(self, k: int) -> list[int]:
        """The next k example indices (crossing epoch boundaries); advances `cursor` by k."""
        out = []
        while len(out) < k:
            epoch, i = divmod(self.cursor, self.n)
            out.append(self.order(epoch)[i])
            self.cursor += 1
        return out

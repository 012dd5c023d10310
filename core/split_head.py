"""A causal LM as its body and its output layer, so a pass can put off the output layer and run it
only at the positions a caller turns out to need.

Public: split_head(model) -> HeadSplit | None; HeadSplit (body, head); PositionLogits (hidden states
of a pass, logits at chosen (row, position) pairs on demand); SPLIT_MODEL_TYPES.

Why: a verification pass scores every drafted position, but a round keeps only the positions up to
each row's first rejection; the teacher's output layer at the later ones is thrown away. With a weak
student nearly every row is rejected at its first position, so at a draft length of 5 four fifths
of the output layer's work is wasted: on SmolLM2-135M, a 49,152 x 576 product per position, a fifth
of a pass's multiply-adds. Splitting the model lets the sampler test position by position and run
the output layer on the rows still alive.

Which models: the causal-LM forward of these model types is exactly `logits = lm_head(body(...)
.last_hidden_state)` with no logit processing after it (no soft-capping, no scaling), so body + head
give the same logits as the whole model. Others, and any model whose config names a logit
soft-cap or scale, get None and keep the full pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["split_head", "HeadSplit", "PositionLogits", "SPLIT_MODEL_TYPES"]

# Read from transformers 5's modeling files: body call, then lm_head, nothing after.
SPLIT_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma")

# Config fields that mean logits are processed after the output layer in some architecture.
_LOGIT_PROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class HeadSplit:
    body: torch.nn.Module     # the decoder: returns last_hidden_state (after the final norm) and the cache
    head: torch.nn.Linear     # the output layer


def split_head(model) -> HeadSplit | None:
    """The model's body and output layer, where its logits are exactly head(body(...)), else None."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in SPLIT_MODEL_TYPES:
        return None
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in _LOGIT_PROCESSING):
        return None
    get_body, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if get_body is None or get_head is None:
        return None
    try:
        body, head = get_body(), get_head()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(body, torch.nn.Module) or body is model or type(head) is not torch.nn.Linear:
        return None
    return HeadSplit(body, head)


class PositionLogits:
    """The hidden states [A, W, H] of a pass; logits at chosen (row, position) pairs on demand.

    `head` maps [m, H] to [m, V] (the output layer, cut to the vocabulary). Each call runs it on just
    the pairs asked for, so the product's rows, and with them its cost, follow what is needed."""

    def __init__(self, hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]):
        self.hidden = hidden
        self._head = head
        self.shape = hidden.shape[:2]

    def at(self, rows: torch.Tensor, positions: torch.Tensor | int) -> torch.Tensor:
        """Logits [m, V] of hidden[rows[i], positions[i]] (positions: one per row, or one for all)."""
        return self._head(self.hidden[rows, positions])

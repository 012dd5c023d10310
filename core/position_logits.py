"""Logits at chosen positions only: the output layer runs on the columns that predict a response token.

Public: logits_at(model, input_ids, attention_mask, pred, vocab_size) -> [N, V] (row-major over the
True entries of pred [B, L]); keeps_positions(model) -> bool.

Why: the output layer of a model with a large vocabulary is a large share of a training forward and
backward (SmolLM2-135M: 28M of its 134M weights are the 49,152-row embedding it shares with the
output layer), and the prompt positions' logits are thrown away. transformers' causal LMs take
`logits_to_keep` (an int for the last n positions, or a 1-D tensor of sequence positions) and apply
their own logit processing (soft-capping, scaling) after the smaller output layer, so passing the
columns any row needs keeps every architecture's semantics. A model whose forward has no such
argument gets the full logits, selected afterwards: same values.
"""
from __future__ import annotations

import inspect

import torch


def _inner(model):
    """The module whose forward defines the arguments: through DDP / FSDP (.module) and PEFT wrappers."""
    m = model
    for _ in range(8):
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif isinstance(getattr(m, "module", None), torch.nn.Module):
            m = m.module
        else:
            break
    return m


def keeps_positions(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do)."""
    try:
        return "logits_to_keep" in inspect.signature(_inner(model).forward).parameters
    except (TypeError, ValueError):
        return False


def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pred: torch.Tensor,
              vocab_size: int) -> torch.Tensor:
    """The model's logits [N, vocab_size] at the True positions of pred [B, L], row-major; the output
    layer only sees the columns some row needs (every column when the model cannot be told)."""
    cols = pred.any(0).nonzero().flatten()
    if keeps_positions(model) and 0 < cols.numel() < pred.shape[1]:
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       logits_to_keep=cols.to(input_ids.device)).logits
        return logits[..., :vocab_size][pred[:, cols.to(pred.device)]]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[..., :vocab_size][pred]

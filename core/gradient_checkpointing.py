"""--gradient-checkpointing: the student's decoder layers recompute their activations in backward.

Public: enable_gradient_checkpointing(model), disable_gradient_checkpointing(model).

transformers checkpoints a decoder layer only while the model is in train mode with gradients on, and
then drops the KV cache (use_cache=False). skd's training forward (skd.core.objective.distill_loss) is
the one forward that runs so; the sampler and the validation loss run the student in eval mode under
no_grad, so they keep their KV cache and are unchanged. Nothing turns the cache off because
checkpointing is on (TRL's trainers did: slow sampling with no memory to gain). The checkpoints are
non-reentrant (torch.utils.checkpoint, use_reentrant=False): no input needs requires_grad, DDP and
FSDP work, and the recomputed forward runs the same kernels, so loss and gradients are those
without checkpointing (tests/test_gradient_checkpointing.py states the tolerance).
"""
from __future__ import annotations

import weakref

import torch

from skd.core.errors import SkdError

_KWARGS = {"use_reentrant": False}
_HOOKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> its use_cache hook


def _no_cache_when_training(module, args, kwargs):
    """A checkpointed forward keeps no KV cache; transformers turns use_cache off itself but warns that it
    did, which reads as if sampling lost its cache. The training forward says so instead (a forward that
    asks for a cache, as the sampler's do, is left alone)."""
    if module.training and torch.is_grad_enabled() and kwargs.get("use_cache") is None:
        return args, {**kwargs, "use_cache": False}
    return None


def enable_gradient_checkpointing(model) -> None:
    """Checkpoint every decoder layer of transformers `model` (non-reentrant); SkdError when it cannot."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SkdError(f"{type(model).__name__} does not support gradient checkpointing",
                       "drop --gradient-checkpointing (or lower --micro-batch-size to save memory)")
    # transformers >= 5.2x names it activation checkpointing (the old name warns); older ones only have the old.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(_KWARGS))
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(_KWARGS))
    if model not in _HOOKS:
        _HOOKS[model] = model.register_forward_pre_hook(_no_cache_when_training, with_kwargs=True)


def disable_gradient_checkpointing(model) -> None:
    """Undo enable_gradient_checkpointing."""
    hook = _HOOKS.pop(model, None)
    if hook is not None:
        hook.remove()
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()

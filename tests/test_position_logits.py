"""skd.core.position_logits: the output layer runs on the response-predicting columns only, with the
same logits and gradients as the full forward followed by selection."""
import pytest
import torch

from skd.core.position_logits import keeps_positions, logits_at
from skd.core.presets import tiny_model

V = 103
ARCHS = ["llama", "gpt2", "gemma", "gemma2", "qwen2"]


def _batch(L=40):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (4, L), generator=g)
    attn = torch.ones(4, L, dtype=torch.long)
    attn[0, :6] = 0                       # a left-padded prompt
    pred = torch.zeros(4, L, dtype=torch.bool)
    pred[:, 20:-1] = True
    pred[1, 31:] = False                  # a shorter response
    pred[3, 12:20] = True                 # a row whose response starts earlier
    return ids, attn, pred


def _full(model, ids, attn, pred):
    return model(input_ids=ids, attention_mask=attn).logits[..., :V][pred]


@pytest.mark.parametrize("arch", ARCHS)
def test_same_logits_and_gradients_as_the_full_forward(arch):
    ids, attn, pred = _batch()
    # float32: the tiny gemma2 in float64 turns a left-padded row into NaN on either path
    kept, full = (tiny_model(arch, V, seed=1, dtype=torch.float32, hidden=32, layers=2) for _ in range(2))
    assert keeps_positions(kept)
    target = torch.log_softmax(torch.randn(int(pred.sum()), V, generator=torch.Generator().manual_seed(1),
                                           dtype=torch.float32), -1)
    outs = []
    for model, fn in ((kept, lambda m: logits_at(m, ids, attn, pred, V)), (full, lambda m: _full(m, ids, attn, pred))):
        x = fn(model)
        loss = torch.nn.functional.kl_div(torch.log_softmax(x, -1), target, log_target=True, reduction="sum")
        loss.backward()
        outs.append((x.detach(), [p.grad for p in model.parameters()]))
    (xa, ga), (xb, gb) = outs
    assert xa.shape == (int(pred.sum()), V)
    assert not xa.isnan().any()
    torch.testing.assert_close(xa, xb, rtol=1e-6, atol=1e-6)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_output_layer_sees_only_the_needed_columns():
    ids, attn, pred = _batch()
    model = tiny_model("llama", V, seed=1, dtype=torch.float32, hidden=32, layers=2)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    with torch.no_grad():
        logits_at(model, ids, attn, pred, V)
    assert seen == [int(pred.any(0).sum())] and seen[0] < ids.shape[1]


def test_a_model_without_logits_to_keep_gets_the_full_forward():
    ids, attn, pred = _batch()
    inner = tiny_model("llama", V, seed=1, dtype=torch.float32, hidden=32, layers=2)

    class Plain(torch.nn.Module):   # a causal LM whose forward takes only the two tensors
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return inner(input_ids=input_ids, attention_mask=attention_mask)

    plain = Plain()
    assert not keeps_positions(plain)
    with torch.no_grad():
        torch.testing.assert_close(logits_at(plain, ids, attn, pred, V), _full(inner, ids, attn, pred),
                                   rtol=0, atol=0)


def test_wrappers_are_seen_through():
    peft = pytest.importorskip("peft")
    model = tiny_model("llama", V, seed=1, dtype=torch.float32, hidden=32, layers=2)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert keeps_positions(wrapped)
    ids, attn, pred = _batch()
    with torch.no_grad():
        torch.testing.assert_close(logits_at(wrapped, ids, attn, pred, V), _full(wrapped, ids, attn, pred),
                                   rtol=0, atol=0)

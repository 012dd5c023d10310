"""SpecKD and AdaSwitch: the identities that tie them to on-policy KD and teacher sampling, on tiny models.

- AdaSwitch with an infinite threshold is mode "student" token for token; with threshold 0 it is the
  student's first token, then mode "teacher" continuing it; at any threshold its switch positions are
  the ones the rule gives on divergences recomputed from fresh forwards; rows do not influence each other.
- SpecKD's loss mask is exactly the accepted-provenance mask, the accepted tokens are those inside the
  teacher's top-K (recomputed with plain torch), the greedy proposals are the student's argmax; with
  K = V it trains exactly as on-policy KD; with a rejected weight the loss is the weighted mean.
- Both run from the command line and resume bit for bit.
"""
import json

import pytest
import torch

from skd.core import losses
from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.gating import speckd_gate
from skd.core.objective import accumulate_gradients, sequence_weights
from skd.core.sampling import PROV_REJECTED, PROV_STUDENT, PROV_TEACHER, sample
from helpers import addition_examples

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]
NO_EOS = -1
BASE = dict(max_new_tokens=16, student_temperature=0.9, student_top_p=0.95, teacher_temperature=0.8,
            teacher_top_p=0.95)


def _gens(s=0, t=0):
    return dict(student_generator=torch.Generator().manual_seed(100 + s),
                teacher_generator=torch.Generator().manual_seed(200 + t))


def _sample(pair, mode, prompts=PROMPTS, gens=None, **kw):
    teacher, student = pair
    return sample(teacher, student, prompts, SampleConfig(mode=mode, **{**BASE, **kw}), eos_token_id=NO_EOS,
                  vocab_size=V, **(gens or _gens()))


def _fresh_logits(model, out):
    """[B] lists of the model's logits predicting each response token, from one plain forward."""
    with torch.no_grad():
        logits = model(input_ids=out.tokens, attention_mask=out.attention_mask).logits[..., :V]
    return [logits[b, int(p) - 1: int(n) - 1] for b, (p, n) in enumerate(zip(out.prompt_lengths, out.lengths))]


# --------------------------------------------------------------------------- AdaSwitch sampling

def test_adaswitch_with_an_infinite_threshold_is_on_policy_sampling(sharp_pair64):
    ada = _sample(sharp_pair64, "adaswitch", switch_threshold=float("inf"))
    pol = _sample(sharp_pair64, "student")
    assert ada.responses() == pol.responses()
    assert ada.switch_at.tolist() == [-1, -1, -1] and ada.replaced == 0
    assert (ada.provenance[ada.response_mask] == PROV_STUDENT).all()
    for kept, fresh in zip(ada.teacher_logits, _fresh_logits(sharp_pair64[0], ada)):   # reused for the loss
        torch.testing.assert_close(kept[: fresh.shape[0]], fresh, rtol=0, atol=1e-9)


def test_adaswitch_with_threshold_zero_is_the_teacher_after_the_first_token(sharp_pair64):
    ada = _sample(sharp_pair64, "adaswitch", switch_threshold=0.0)
    first = [r[0] for r in _sample(sharp_pair64, "student", max_new_tokens=1).responses()]
    tea = _sample(sharp_pair64, "teacher", prompts=[p + [f] for p, f in zip(PROMPTS, first)],
                  max_new_tokens=BASE["max_new_tokens"] - 1, gens=_gens(s=7))
    assert [r[0] for r in ada.responses()] == first
    assert [r[1:] for r in ada.responses()] == tea.responses()
    assert ada.switch_at.tolist() == [1, 1, 1]
    for b, r in enumerate(ada.responses()):
        p = int(ada.prompt_lengths[b])
        assert ada.provenance[b, p] == PROV_STUDENT and (ada.provenance[b, p + 1: p + len(r)] == PROV_TEACHER).all()
    assert ada.replaced == ada.generated - len(PROMPTS)


@pytest.mark.parametrize("threshold,window,kind", [(1.5, 4, "fkl"), (2.0, 8, "rkl"), (1.2, 1, "tvd"),
                                                   (1.5, 3, "jsd")])
def test_adaswitch_switch_positions_follow_the_rule(sharp_pair64, threshold, window, kind):
    teacher, student = sharp_pair64
    ada = _sample(sharp_pair64, "adaswitch", switch_threshold=threshold, switch_window=window, switch_divergence=kind,
                  max_new_tokens=24)
    switched = 0
    for b, (t, s) in enumerate(zip(_fresh_logits(teacher, ada), _fresh_logits(student, ada))):
        d = losses.divergence_per_token(s, t, kind).tolist()
        expect = -1
        for i in range(1, len(d)):
            hist = d[max(0, i - window): i]
            if d[i] >= threshold * sum(hist) / len(hist):
                expect = i
                break
        assert int(ada.switch_at[b]) == expect
        p, n = int(ada.prompt_lengths[b]), int(ada.lengths[b])
        prov = ada.provenance[b, p:n].tolist()
        cut = expect if expect >= 0 else n - p
        assert prov == [PROV_STUDENT] * cut + [PROV_TEACHER] * (n - p - cut)
        switched += expect >= 0
    assert switched >= 1   # the thresholds are low enough for the rule to fire somewhere


def test_adaswitch_rows_are_independent(sharp_pair64):
    kw = dict(student_temperature=0, teacher_temperature=0, switch_threshold=1.5, switch_window=3)
    batched = _sample(sharp_pair64, "adaswitch", **kw)
    singles = [_sample(sharp_pair64, "adaswitch", prompts=[p], **kw) for p in PROMPTS]
    assert batched.responses() == [s.responses()[0] for s in singles]
    assert batched.switch_at.tolist() == [int(s.switch_at[0]) for s in singles]


# --------------------------------------------------------------------------- SpecKD's gate

def _teacher_flat(teacher, s):
    return torch.cat(_fresh_logits(teacher, s))


@pytest.mark.parametrize("verification", ["sampled", "greedy"])
@pytest.mark.parametrize("k,weight", [(1, 0.0), (3, 0.0), (3, 0.25), (V, 0.0)])
def test_speckd_mask_is_the_accepted_provenance_and_the_top_k_test(sharp_pair64, verification, k, weight):
    teacher, student = sharp_pair64
    s = _sample(sharp_pair64, "student", speckd_verification=verification)
    tf = _teacher_flat(teacher, s)
    gated = speckd_gate(s, tf, k=k, verification=verification, rejected_weight=weight)
    if verification == "greedy":
        fresh = torch.cat(_fresh_logits(student, s)).argmax(-1)
        assert torch.equal(s.student_argmax[:, : int(s.response_lengths.max())][
            torch.arange(int(s.response_lengths.max()))[None] < s.response_lengths[:, None]], fresh)
        proposals = fresh
    else:
        proposals = s.tokens[s.response_mask]
    # Plain torch: a proposal passes when fewer than k tokens have a strictly larger teacher logit.
    rank = (tf > tf.gather(1, proposals[:, None])).sum(1)
    passed = rank < k
    resp = gated.response_mask
    assert torch.equal(gated.provenance[resp] == PROV_STUDENT, passed)
    assert torch.equal(gated.provenance[resp] == PROV_REJECTED, ~passed)
    assert torch.equal(gated.loss_weights[resp], torch.where(passed, 1.0, weight).float())
    if weight == 0.0:
        assert torch.equal(gated.loss_weights[resp] > 0, gated.provenance[resp] == PROV_STUDENT)
    assert (gated.loss_weights[~resp] == 0).all() and torch.equal(gated.tokens, s.tokens)
    assert gated.proposed == int(resp.sum()) and gated.accepted == int(passed.sum())
    if k >= V:
        assert bool(passed.all())


def test_speckd_weighted_loss_is_the_weighted_mean_per_sequence(sharp_pair64):
    teacher, student = sharp_pair64
    student = type(student)(student.config).double()
    student.load_state_dict(sharp_pair64[1].state_dict())
    s = _sample(sharp_pair64, "student")
    tf = _teacher_flat(teacher, s)
    gated = speckd_gate(s, tf, k=3, verification="sampled", rejected_weight=0.25)
    div = losses.get_divergence("fkl")
    loss = accumulate_gradients(student, gated, tf, divergence=div, micro_batch_size=3, loss_norm="sequence",
                                vocab_size=V)
    with torch.no_grad():
        z = _fresh_logits(student, gated)
    per_row = []
    n_tok = 0
    for b, zb in enumerate(z):
        n = zb.shape[0]
        d = losses.divergence_per_token(zb, tf[n_tok: n_tok + n], "fkl")
        p = int(gated.prompt_lengths[b])
        w = gated.loss_weights[b, p: p + n].double()
        per_row.append(float((w * d).sum() / w.sum()))
        n_tok += n
    assert loss == pytest.approx(sum(per_row) / len(per_row), rel=1e-6)   # row weights are float32
    assert torch.allclose(sequence_weights(gated, "sequence"),
                          1 / (gated.loss_weights * gated.response_mask).sum(1))


# --------------------------------------------------------------------------- training loop

def _pair():
    from skd.core.presets import tiny_model

    teacher = tiny_model("llama", 103, seed=1, hidden=32, layers=2)
    student = tiny_model("llama", 103, seed=2, hidden=16, layers=1)
    teacher.requires_grad_(False)
    return teacher, student


def _cfg(out, method, *, k=5, steps=3, **kw):
    sample_kw = {key: kw.pop(key) for key in list(kw) if key in SampleConfig.__dataclass_fields__}
    return RunConfig(model=ModelConfig(), data=DataConfig(task="arith", val_limit=0),
                     train=TrainConfig(method=method, max_steps=steps, batch_size=4, eval_every=0, save_every=1,
                                       lr=1e-3, output_dir=str(out), keep_checkpoints=5, **kw),
                     sample=SampleConfig(max_new_tokens=8, k=k, **sample_kw))


def _metrics(out):
    from skd.core.train import TIMING_KEYS as skip
    return [{k: v for k, v in json.loads(x).items() if k not in skip} for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def test_speckd_with_k_at_the_vocabulary_trains_exactly_as_on_policy_kd(char_tokenizer, tmp_path, one_thread):
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 8), [])
    train(_cfg(tmp_path / "pol", "on-policy"), models=(*_pair(), char_tokenizer), examples=ex)
    train(_cfg(tmp_path / "spec", "speckd", k=103), models=(*_pair(), char_tokenizer), examples=ex)
    pol, spec = _metrics(tmp_path / "pol"), _metrics(tmp_path / "spec")
    assert [r["loss"] for r in spec] == [r["loss"] for r in pol]
    assert [r["grad_norm"] for r in spec] == [r["grad_norm"] for r in pol]
    assert all(r["acceptance_rate"] == 1.0 for r in spec)
    a, b = _weights(tmp_path / "pol"), _weights(tmp_path / "spec")
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("method,kw", [("speckd", dict(k=3, rejected_weight=0.1, speckd_verification="greedy")),
                                       ("speckd", dict(k=3)),
                                       ("adaswitch", dict(switch_threshold=1.2, switch_window=2))])
def test_new_methods_resume_bit_for_bit(char_tokenizer, tmp_path, one_thread, method, kw):
    from skd.core import checkpoint as ckpt
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 8), [])
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, method, steps=4, **dict(kw)), models=(*_pair(), char_tokenizer), examples=ex)
    train(_cfg(cut, method, steps=4, **dict(kw)), models=(*_pair(), char_tokenizer), examples=ex)
    for name in ("final", "checkpoints/step-000003"):            # as if killed right after step 2's save
        ckpt.discard(cut / name)
    summary = train(_cfg(cut, method, steps=4, resume=True, **dict(kw)), models=(*_pair(), char_tokenizer),
                    examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    a, b = _weights(full), _weights(cut)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert _metrics(cut) == _metrics(full)
    rec = _metrics(full)[-1]
    if method == "adaswitch":
        assert len(rec["switch_positions"]) == 4 and 0 <= rec["switch_rate"] <= 1
        assert any(p >= 1 for r in _metrics(full) for p in r["switch_positions"])   # the rule fired somewhere
    else:
        assert 0 < rec["acceptance_rate"] < 1 and rec["proposed"] == rec["response_tokens"]


@pytest.mark.parametrize("method,extra", [("speckd", ["--k", "3", "--speckd-verification", "greedy"]),
                                          ("adaswitch", ["--switch-threshold", "1.5", "--switch-window", "4"])])
def test_new_methods_run_from_the_command_line(tmp_path, one_thread, method, extra):
    from click.testing import CliRunner

    from skd.cli.main import main

    out = tmp_path / method
    r = CliRunner().invoke(main, ["distill", "--method", method, "--task", "arith", "--limit", "8", "--val-limit", "0",
                                  "--batch-size", "4", "--max-steps", "2", "--max-new-tokens", "8", "--save-every", "0",
                                  "--output-dir", str(out), *extra])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["train"]["method"] == method
    assert len(_metrics(out)) == 2

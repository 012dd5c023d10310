"""--gradient-checkpointing: the same loss and gradients, the training forward recomputes its layers,
sampling keeps its KV cache, exact resume, and `skd bench distill --gradient-checkpointing`.

Tolerance: loss and every gradient with checkpointing equal those without to rtol 1e-12 / atol 1e-15
in float64 (on the CPU they are in fact bit-identical: the recompute runs the same kernels, so whole
training runs are compared bit for bit below).
"""
import copy
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from skd.core import checkpoint as ckpt
from skd.core import losses
from skd.core.batches import build_training_batch, teacher_logits_flat
from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.errors import SkdError
from skd.core.gradient_checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing
from skd.core.kvcache import returned_cache
from skd.core.objective import accumulate_gradients
from skd.core.presets import tiny_model
from skd.core.train import TIMING_KEYS as TIMING
from helpers import addition_examples

V = 103
pytestmark = pytest.mark.usefixtures("one_thread")


def _attention_calls(model) -> list[int]:
    """A counter of attention-module entries (a checkpointed layer enters again when backward recomputes it)."""
    calls = [0]
    for name, m in model.named_modules():
        if name.endswith((".self_attn", ".attn")):
            m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _batch(method, teacher, student, tok, n=8):
    gens = {"student": torch.Generator().manual_seed(1), "teacher": torch.Generator().manual_seed(2),
            "method": torch.Generator().manual_seed(3)}
    return build_training_batch(method, addition_examples(tok, n), step=0, total_steps=10, teacher=teacher,
                                student=student, scfg=SampleConfig(max_new_tokens=8, gamma=3, k=5), gens=gens,
                                tokenizer=tok, pad_id=0, vocab_size=V, gkd_lambda=0.5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method, divergence", [("sft", None), ("skd", "fkl"), ("on-policy", "jsd")])
def test_loss_and_every_gradient_equal_those_without_checkpointing(char_tokenizer, arch, method, divergence):
    teacher = tiny_model(arch, V, seed=1, dtype=torch.float64, hidden=32, layers=2).requires_grad_(False)
    student = tiny_model(arch, V, seed=2, dtype=torch.float64, hidden=16, layers=2)
    s = _batch(method, teacher, student, char_tokenizer)
    div = losses.get_divergence(divergence) if divergence else None
    tf = teacher_logits_flat(teacher, s, V) if div is not None else None
    results = {}
    for on in (False, True):
        m = copy.deepcopy(student)
        if on:
            enable_gradient_checkpointing(m)
        m.train()
        calls = _attention_calls(m)
        loss = accumulate_gradients(m, s, tf, divergence=div, micro_batch_size=4, loss_norm="sequence", vocab_size=V)
        results[on] = (loss, [p.grad for p in m.parameters()], calls[0])
    (l0, g0, c0), (l1, g1, c1) = results[False], results[True]
    assert c0 == 2 * 2 and c1 == 2 * c0          # 2 layers x 2 micro-batches; recomputed in backward
    assert l1 == pytest.approx(l0, rel=1e-12, abs=1e-15)
    assert len(g0) == len(g1) and all(g is not None for g in g0 + g1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)


class _ForwardLog:
    """Every forward of a model: train mode?, tokens fed, the length of the cache passed in (before the
    forward: the cache grows in place) and of the one returned."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, with_kwargs=True)

    def _before(self, module, args, kwargs):
        passed = kwargs.get("past_key_values", kwargs.get("cache"))
        self.calls.append({"training": module.training, "fed": int(kwargs["input_ids"].shape[1]),
                           "use_cache": kwargs.get("use_cache"),
                           "passed": None if passed is None else int(passed.get_seq_length())})

    def _after(self, module, args, kwargs, out):
        back = returned_cache(out)
        self.calls[-1]["returned"] = None if back is None else int(back.get_seq_length())


@pytest.mark.parametrize("method", ["skd", "on-policy"])
def test_sampling_keeps_its_kv_cache_with_checkpointing_on(char_tokenizer, method):
    """The student between two training steps (train mode, checkpointing on) samples with its cache:
    after the prefill every forward is handed the cache and feeds only the new tokens, and the
    samples are those of a student without checkpointing."""
    teacher = tiny_model("llama", V, seed=1, dtype=torch.float64, hidden=32, layers=2).requires_grad_(False)
    plain = tiny_model("llama", V, seed=2, dtype=torch.float64, hidden=16, layers=2)
    student = copy.deepcopy(plain)
    enable_gradient_checkpointing(student)
    student.train()
    log = _ForwardLog(student)
    s = _batch(method, teacher, student, char_tokenizer)
    assert student.training                                   # the sampler hands it back in train mode
    calls = log.calls
    assert len(calls) >= 3 and not any(c["training"] for c in calls)
    assert calls[0]["passed"] is None and calls[0]["fed"] > 3                     # the prefill
    for before, c in zip(calls, calls[1:]):
        assert c["use_cache"] is True and c["passed"] is not None and c["returned"] is not None
        assert c["fed"] <= 3 + 1                                                  # gamma drafts (+ 1), never the prefix
        assert c["passed"] == before["returned"] and c["returned"] == c["passed"] + c["fed"]
    ref = _batch(method, teacher, plain.train(), char_tokenizer)
    assert torch.equal(s.tokens, ref.tokens)


def _cfg(out, **kw):
    t = dict(method="skd", max_steps=4, batch_size=2, eval_every=2, save_every=1, keep_checkpoints=5, lr=1e-3,
             output_dir=str(out))
    t.update(kw)
    return RunConfig(model=ModelConfig(), data=DataConfig(val_limit=2), train=TrainConfig(**t),
                     sample=SampleConfig(max_new_tokens=5, gamma=2, k=5))


def _models(tok, arch="llama"):
    return (tiny_model(arch, V, seed=1, hidden=32, layers=2), tiny_model(arch, V, seed=2, hidden=16, layers=2), tok)


def _examples(tok):
    return addition_examples(tok, 5), addition_examples(tok, 2, seed=1)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _assert_same_run(a, b):
    wa, wb = _weights(a / "final"), _weights(b / "final")
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k not in TIMING}  # noqa: E731
                         for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(a) == strip(b)


def test_training_with_checkpointing_is_training_without_and_the_cache_stays_on(char_tokenizer, tmp_path):
    from skd.core.train import train

    train(_cfg(tmp_path / "plain"), models=_models(char_tokenizer), examples=_examples(char_tokenizer))
    models = _models(char_tokenizer)
    log, calls = _ForwardLog(models[1]), _attention_calls(models[1])
    train(_cfg(tmp_path / "gc", gradient_checkpointing=True), models=models, examples=_examples(char_tokenizer))
    _assert_same_run(tmp_path / "plain", tmp_path / "gc")        # bit for bit on the CPU
    training = [c for c in log.calls if c["training"]]
    sampling = [c for c in log.calls if not c["training"]]
    assert len(training) == 4                                       # one training forward per step (micro = batch)
    assert calls[0] == 2 * 2 * len(training) + 2 * (len(sampling))  # training layers entered twice, the rest once
    assert all(c["returned"] is not None for c in sampling if c["use_cache"])
    assert sum(c["passed"] is not None for c in sampling) > len(sampling) // 2   # most sampling forwards use the cache
    assert not any(getattr(m, "gradient_checkpointing", False) for m in models[1].modules())   # handed back as it came
    saved = json.loads((tmp_path / "gc" / "run_config.json").read_text())
    assert saved["train"]["gradient_checkpointing"] is True


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_resume_with_checkpointing_is_bit_identical_and_it_may_be_toggled(char_tokenizer, tmp_path, arch):
    from skd.core.train import train

    ex = _examples(char_tokenizer)
    full, cut, toggled = tmp_path / "full", tmp_path / "cut", tmp_path / "toggled"
    for out in (full, cut, toggled):
        train(_cfg(out, gradient_checkpointing=True), models=_models(char_tokenizer, arch), examples=ex)
    for out in (cut, toggled):
        for name in ("final", "checkpoints/step-000003"):          # as if killed right after step 2's save
            ckpt.discard(out / name)
    summary = train(_cfg(cut, gradient_checkpointing=True, resume=True), models=_models(char_tokenizer, arch),
                    examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    _assert_same_run(cut, full)
    # it changes no result, so a resume may turn it off (or on, to fit in memory)
    train(_cfg(toggled, resume=True), models=_models(char_tokenizer, arch), examples=ex)
    _assert_same_run(toggled, full)


def test_a_model_without_checkpointing_support_is_refused_before_anything_is_written(char_tokenizer, tmp_path):
    from skd.core.train import train

    teacher, student, tok = _models(char_tokenizer)
    student.supports_gradient_checkpointing = False
    out = tmp_path / "run"
    with pytest.raises(SkdError, match="does not support gradient checkpointing.*--gradient-checkpointing"):
        train(_cfg(out, gradient_checkpointing=True), models=(teacher, student, tok), examples=_examples(tok))
    assert not out.exists()


def test_enable_then_disable_leaves_the_model_as_it_was():
    m = tiny_model("llama", V, seed=2, hidden=16, layers=2)
    flags = lambda: [getattr(x, "gradient_checkpointing", None) for x in m.modules()]  # noqa: E731
    before = flags()
    enable_gradient_checkpointing(m)
    assert any(f is True for f in flags())
    disable_gradient_checkpointing(m)
    assert flags() == before


def test_distill_gradient_checkpointing_option(tmp_path):
    from skd.cli.main import main

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["distill", "--method", "supervised", "--limit", "8", "--max-steps", "1",
                                  "--batch-size", "2", "--max-new-tokens", "8", "--eval-every", "0", "--save-every",
                                  "0", "--gradient-checkpointing", "--output-dir", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run_config.json").read_text())["train"]["gradient_checkpointing"] is True


def test_bench_distill_compares_peak_memory_with_and_without_checkpointing(tmp_path):
    """In a subprocess: the comparison fixes glibc's mmap threshold for the rest of its process."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "skd", "bench", "distill", "--method", "sft", "--steps", "1",
                        "--batch-size", "2", "--max-new-tokens", "8", "--memory-vocab", "1000", "--memory-positions",
                        "8", "--gradient-checkpointing", "--checkpointing-positions", "128", "--output", str(out)],
                       capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "peak memory with / without" in r.stdout
    res = json.loads(out.read_text())["gradient_checkpointing"]
    assert res["config"]["model"] == "tiny-teacher" and res["config"]["positions"] == 128
    off, on = res["results"]["off"]["peak_bytes"], res["results"]["on"]["peak_bytes"]
    assert off > 0 and res["ratios"]["peak_on_over_off"] == on / off
    assert on < off            # the activations of 4 layers x 256 x 2 x 128 dominate this step

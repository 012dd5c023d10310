"""The training loop: every method runs, accumulation is exact, checkpoints load, architectures work."""
import json

import pytest
import torch

from skd.core import losses
from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.errors import SkdError
from skd.core.presets import tiny_model
from skd.core.batches import build_training_batch, teacher_logits_flat
from skd.core.objective import accumulate_gradients
from skd.core.train import train
from helpers import addition_examples

V = 103  # the char tokenizer's vocabulary


def _pair(arch="llama", dtype=torch.float32):
    teacher = tiny_model(arch, V, seed=1, dtype=dtype, hidden=32, layers=2)
    student = tiny_model(arch, V, seed=2, dtype=dtype, hidden=16, layers=1)
    teacher.requires_grad_(False)
    return teacher, student


def _cfg(tmp_path, method, **train_kw):
    kw = dict(method=method, max_steps=2, batch_size=4, eval_every=2, save_every=1, lr=1e-3,
              output_dir=str(tmp_path / method))
    kw.update(train_kw)
    return RunConfig(model=ModelConfig(), data=DataConfig(task="arith", val_limit=4),
                     train=TrainConfig(**kw), sample=SampleConfig(max_new_tokens=6, gamma=3, k=5))


@pytest.mark.parametrize("method", ["skd", "supervised", "on-policy", "imitkd", "two-stage", "mixed-skd", "gkd",
                                    "seqkd", "sft"])
def test_every_method_trains_and_checkpoints(tmp_path, char_tokenizer, method):
    from transformers import AutoModelForCausalLM

    teacher, student = _pair()
    before = [p.detach().clone() for p in student.parameters()]
    cfg = _cfg(tmp_path, method)
    summary = train(cfg, models=(teacher, student, char_tokenizer),
                    examples=(addition_examples(char_tokenizer, 8), addition_examples(char_tokenizer, 4, seed=1)))
    assert summary["steps"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    out = tmp_path / method
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    assert "val_loss" in lines[-1]
    for key in ("correction_rate", "acceptance_rate", "mean_accepted_prefix", "tokens_per_s", "time_sampling",
                "time_teacher", "time_loss_backward"):
        assert key in lines[0]
    if method == "skd":
        assert lines[0]["proposed"] > 0
    reloaded = AutoModelForCausalLM.from_pretrained(out / "final")
    for a, b in zip(reloaded.parameters(), student.parameters()):
        torch.testing.assert_close(a, b)
    assert json.loads((out / "final" / "skd_run_config.json").read_text())["train"]["method"] == method
    assert not list(out.rglob(".*tmp-*"))  # no half-written folders left behind


@pytest.mark.parametrize("method", ["skd", "supervised", "sft"])
@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_batch_8_equals_4_accumulation_steps_of_2(char_tokenizer, method, norm):
    teacher, student = _pair(dtype=torch.float64)
    batch = addition_examples(char_tokenizer, 8)
    gens = {"student": torch.Generator().manual_seed(1), "teacher": torch.Generator().manual_seed(2),
            "method": torch.Generator().manual_seed(3)}
    s = build_training_batch(method, batch, step=0, total_steps=10, teacher=teacher, student=student,
                             scfg=SampleConfig(max_new_tokens=8, gamma=3, k=5), gens=gens, tokenizer=char_tokenizer,
                             pad_id=0, vocab_size=V, gkd_lambda=0.5)
    div = None if method == "sft" else losses.get_divergence("fkl")
    tf = teacher_logits_flat(teacher, s, V) if div is not None else None
    results = []
    for mb in (8, 2):
        student.zero_grad(set_to_none=True)
        loss = accumulate_gradients(student, s, tf, divergence=div, micro_batch_size=mb, loss_norm=norm,
                                    vocab_size=V)
        results.append((loss, [p.grad.clone() for p in student.parameters()]))
    (l8, g8), (l2, g2) = results
    assert l8 == pytest.approx(l2, rel=1e-12, abs=1e-12)
    for a, b in zip(g8, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma", "qwen2"])
def test_skd_distills_on_each_architecture(tmp_path, char_tokenizer, arch):
    teacher, student = _pair(arch)
    summary = train(_cfg(tmp_path, "skd", max_steps=3, eval_every=0, save_every=0),
                    models=(teacher, student, char_tokenizer), examples=(addition_examples(char_tokenizer, 8), []))
    assert summary["steps"] == 3 and summary["last"]["proposed"] > 0


def test_output_dir_with_another_run_is_refused(tmp_path, char_tokenizer):
    teacher, student = _pair()
    cfg = _cfg(tmp_path, "supervised", max_steps=1)
    ex = (addition_examples(char_tokenizer, 4), [])
    train(cfg, models=(teacher, student, char_tokenizer), examples=ex)
    before = (tmp_path / "supervised" / "metrics.jsonl").read_text()
    with pytest.raises(SkdError, match="--overwrite"):
        train(cfg, models=(teacher, student, char_tokenizer), examples=ex)
    assert (tmp_path / "supervised" / "metrics.jsonl").read_text() == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SkdError, match="is a file"):
        train(_cfg(tmp_path, "supervised", output_dir=str(tmp_path / "afile")),
              models=(teacher, student, char_tokenizer), examples=ex)


def test_group_by_length_stream_is_a_seeded_permutation_of_aligned_similar_length_batches(monkeypatch):
    import random

    from skd.core.data import ExampleStream

    monkeypatch.setattr(ExampleStream, "GROUP_POOL", 3)            # pools of 24: several pools and a remainder
    rnd = random.Random(0)
    lengths = [rnd.randint(5, 200) for _ in range(203)]
    grouped, plain = ExampleStream(203, 7, lengths, 8), ExampleStream(203, 7)
    spread = lambda d, e: [max(lengths[j] for j in b) - min(lengths[j] for j in b)  # noqa: E731
                           for b in (d.order(e)[i: i + 8] for i in range(0, 200, 8))]
    for epoch in (0, 1):
        order = grouped.order(epoch)
        assert sorted(order) == list(range(203))
        # every aligned batch of 8 comes from one sorted pool of 24: far tighter than random batches
        assert sum(spread(grouped, epoch)) < 0.5 * sum(spread(plain, epoch))
    assert grouped.order(0) != ExampleStream(203, 7, lengths, 8).order(1)           # a fresh order per epoch
    assert ExampleStream(203, 7, lengths, 8).order(1) == grouped.order(1)           # depends on (seed, epoch) only
    assert ExampleStream(203, 8, lengths, 8).order(0) != ExampleStream(203, 7, lengths, 8).order(0)
    # the stream hands out the epoch's order, batch after batch, across the epoch boundary
    d = ExampleStream(203, 7, lengths, 8)
    got = [d.next(8) for _ in range(30)]
    flat = [j for b in got for j in b]
    assert flat == (d.order(0) + d.order(1))[:240]


@pytest.mark.parametrize("dtype,teacher_dtype,expect_teacher", [("bfloat16", None, torch.bfloat16),
                                                                ("bfloat16", "float32", torch.float32),
                                                                ("float32", "bfloat16", torch.bfloat16)])
def test_the_student_keeps_its_stored_precision_and_the_teacher_its_own_dtype(tmp_path, char_tokenizer, monkeypatch,
                                                                              dtype, teacher_dtype, expect_teacher):
    from safetensors.torch import load_file

    from skd.core import models as model_lib

    teacher, student = _pair()
    for name, m in (("teacher", teacher), ("student", student)):
        m.save_pretrained(tmp_path / name)
        char_tokenizer.save_pretrained(tmp_path / name)
    stored = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in stored.values())  # bf16 would round
    seen = {}
    real = model_lib.load_pair

    def spy(*a, **kw):
        seen["pair"] = real(*a, **kw)
        return seen["pair"]

    def on_event(kind, p):
        if kind == "start":   # after set-up, before the first step: the weights as loaded
            s = seen["pair"].student
            seen["student"] = {k: v.detach().clone() for k, v in s.state_dict().items()}
            seen["dtypes"] = p["dtypes"]

    monkeypatch.setattr(model_lib, "load_pair", spy)
    cfg = RunConfig(model=ModelConfig(teacher=str(tmp_path / "teacher"), student=str(tmp_path / "student"),
                                      dtype=dtype, teacher_dtype=teacher_dtype),
                    data=DataConfig(task="arith", limit=4, val_limit=0),
                    train=TrainConfig(method="supervised", max_steps=1, batch_size=2, eval_every=0, save_every=0,
                                      output_dir=str(tmp_path / "run")),
                    sample=SampleConfig(max_new_tokens=6))
    train(cfg, on_event=on_event)
    for k, v in stored.items():
        assert seen["student"][k].dtype == torch.float32 and torch.equal(seen["student"][k], v), k
    assert next(seen["pair"].teacher.parameters()).dtype == expect_teacher
    assert seen["dtypes"] == {"student_weights": "float32", "compute": dtype,
                              "teacher": str(expect_teacher).replace("torch.", "")}


def test_forward_clock_counts_the_models_forwards_and_the_step_reports_compute_shares(tmp_path, char_tokenizer):
    from skd.core.timing import ForwardClock, clock

    teacher, student = _pair()
    x = torch.tensor([[5, 9, 12]])
    with ForwardClock(teacher, student) as fc:
        with torch.no_grad():
            teacher(input_ids=x)
            student(input_ids=x)
            student(input_ids=x)
    with torch.no_grad():
        student(input_ids=x)                                 # after the block: hooks removed, not counted
    assert fc.calls == 3 and fc.seconds > 0
    assert not student._forward_hooks and not student._forward_pre_hooks
    a = clock(torch.device("cpu"))
    assert clock(torch.device("cpu"), None) >= a
    summary = train(_cfg(tmp_path, "skd", max_steps=2, eval_every=0, save_every=0),
                    models=(teacher, student, char_tokenizer), examples=(addition_examples(char_tokenizer, 8), []))
    rec = summary["last"]
    assert 0 < rec["sampling_forward_share"] <= 1 and 0 < rec["model_time_share"] <= 1
    assert rec["time_in_forward"] > 0 and rec["time_in_backward"] > 0
    assert rec["time_in_forward"] + rec["time_in_backward"] <= rec["time_step"]

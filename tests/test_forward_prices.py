"""--teacher-prices measure (skd.core.forward_prices, skd.core.train): prices measured once before the first
step, handed to --gamma auto, recorded in run_config.json and in every checkpoint, read back on resume
(never measured again, so a resumed run is bit for bit the run it continues); a measured run equals a
run given the same numbers; nothing is measured where --gamma auto does not draft."""
import json

import pytest
import torch

from skd.core import checkpoint as ckpt
from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.errors import SkdError
from skd.core.forward_prices import forward_costs, measure_teacher_prices, prices_from_costs
from helpers import addition_examples

PRICES = (1.25, 1.5, 2.0, 2.5, 2.75, 3.0)


def _pair():
    from skd.core.presets import tiny_model

    teacher = tiny_model("llama", 103, seed=1, hidden=32, layers=2)
    student = tiny_model("llama", 103, seed=2, hidden=16, layers=1)
    teacher.requires_grad_(False)
    return teacher, student


def _cfg(out, method="skd", *, steps=3, resume=False, **sample_kw):
    return RunConfig(model=ModelConfig(), data=DataConfig(task="arith", val_limit=0),
                     train=TrainConfig(method=method, max_steps=steps, batch_size=4, eval_every=0, save_every=1,
                                       lr=1e-3, output_dir=str(out), keep_checkpoints=5, resume=resume),
                     sample=SampleConfig(max_new_tokens=8, k=5, gamma_max=5, **sample_kw))


def _metrics(out):
    from skd.core.train import TIMING_KEYS as skip
    return [{k: v for k, v in json.loads(x).items() if k not in skip}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture
def fixed_measure(monkeypatch):
    """measure_teacher_prices as the trainer calls it, returning PRICES (or what `calls` says) and counting."""
    from skd.core import train as train_mod

    calls = {"n": 0, "prices": PRICES, "gamma_max": None}

    def fake(teacher, student, rows, *, vocab_size, gamma_max, pad_id=0, **kw):
        calls["n"] += 1
        calls["gamma_max"], calls["rows"] = gamma_max, len(rows)
        return calls["prices"], {"student": [2.0], "teacher": [2.0 * p for p in calls["prices"]]}

    monkeypatch.setattr(train_mod, "measure_teacher_prices", fake)
    return calls


def test_forward_costs_on_tiny_models_and_prices_from_them(tiny_pair, one_thread):
    tiny_pair.student.train()
    costs = forward_costs(tiny_pair.teacher, tiny_pair.student, [[5, 6, 7], [8, 9]], vocab_size=tiny_pair.vocab_size,
                          q_max=4, repeats=2)
    assert len(costs["student"]) == 1 and len(costs["teacher"]) == 4
    assert all(x > 0 for x in costs["student"] + costs["teacher"])
    assert tiny_pair.student.training and not tiny_pair.teacher.training   # modes as they came
    assert prices_from_costs({"student": [2.0], "teacher": [3.0, 5.0]}) == (1.5, 2.5)
    prices, costs = measure_teacher_prices(tiny_pair.teacher, tiny_pair.student, [[5, 6, 7]],
                                           vocab_size=tiny_pair.vocab_size, gamma_max=3, repeats=1, sweeps=1)
    assert len(prices) == 4 and prices == prices_from_costs(costs)   # widths 1..gamma_max + 1 (bonus kept)


def test_measure_is_a_setting_value_and_the_sampler_refuses_it_unresolved(sharp_pair64):
    from skd.core.sampling import sample

    assert SampleConfig(teacher_prices=" Measure ").teacher_prices == "measure"
    teacher, student = sharp_pair64
    with pytest.raises(SkdError, match="measure"):
        sample(teacher, student, [[5, 9]], SampleConfig(mode="skd", gamma="auto", teacher_prices="measure",
                                                       max_new_tokens=4), vocab_size=40,
               student_generator=torch.Generator().manual_seed(0), teacher_generator=torch.Generator().manual_seed(1))


def test_measured_prices_drive_auto_and_are_recorded_as_given_numbers_would(char_tokenizer, tmp_path, one_thread,
                                                                           fixed_measure, monkeypatch):
    from skd.core import sampling
    from skd.core.train import train

    seen = []
    real = sampling.plan_round   # the planner of --gamma auto with teacher-led rounds (the default)
    monkeypatch.setattr(sampling, "plan_round", lambda a, m, c, D, b, led: seen.append(c) or real(a, m, c, D, b, led))
    ex = (addition_examples(char_tokenizer, 8), [])
    events = []
    train(_cfg(tmp_path / "m", teacher_prices="measure"), models=(*_pair(), char_tokenizer), examples=ex,
          on_event=lambda kind, p: events.append((kind, p)))
    assert fixed_measure["n"] == 1 and fixed_measure["gamma_max"] == 5 and fixed_measure["rows"] == 4
    assert seen and all(c == PRICES for c in seen)
    notices = [p["message"] for kind, p in events if kind == "notice"]
    assert len(notices) == 1 and "1.25, 1.50, 2.00" in notices[0]
    saved = json.loads((tmp_path / "m" / "run_config.json").read_text())
    assert saved["sample"]["teacher_prices"] == "measure" and saved["resolved"]["teacher_prices"] == list(PRICES)
    for name in ("checkpoints/step-000001", "final"):
        assert ckpt.read_trainer_state(tmp_path / "m" / name)["teacher_prices"] == list(PRICES)
    train(_cfg(tmp_path / "g", teacher_prices=PRICES), models=(*_pair(), char_tokenizer), examples=ex)
    assert _metrics(tmp_path / "m") == _metrics(tmp_path / "g")
    a, b = _weights(tmp_path / "m"), _weights(tmp_path / "g")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_resumed_run_reads_its_prices_back_and_is_bit_identical(char_tokenizer, tmp_path, one_thread,
                                                                 fixed_measure):
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 8), [])
    full, cut = tmp_path / "full", tmp_path / "cut"
    for out in (full, cut):
        train(_cfg(out, steps=4, teacher_prices="measure"), models=(*_pair(), char_tokenizer), examples=ex)
    for name in ("final", "checkpoints/step-000003"):   # as if killed right after step 2's save
        ckpt.discard(cut / name)
    fixed_measure["prices"] = (9.0,)   # what a new measurement would say now: must not be used
    n = fixed_measure["n"]
    events = []
    summary = train(_cfg(cut, steps=4, resume=True, teacher_prices="measure"), models=(*_pair(), char_tokenizer),
                    examples=ex, on_event=lambda kind, p: events.append((kind, p)))
    assert summary["resumed_from"].endswith("step-000002") and fixed_measure["n"] == n
    assert any(kind == "notice" and "step-000002" in p["message"] for kind, p in events)
    assert _metrics(cut) == _metrics(full)
    a, b = _weights(full), _weights(cut)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("method,gamma", [("skd", 3), ("on-policy", "auto")])
def test_nothing_is_measured_where_auto_does_not_draft(char_tokenizer, tmp_path, one_thread, fixed_measure,
                                                      method, gamma):
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 8), [])
    events = []
    train(_cfg(tmp_path / "r", method, steps=1, gamma=gamma, teacher_prices="measure"),
          models=(*_pair(), char_tokenizer), examples=ex, on_event=lambda kind, p: events.append((kind, p)))
    assert fixed_measure["n"] == 0
    assert [p["message"] for kind, p in events if kind == "notice"] == [
        "--teacher-prices has no effect here: only --gamma auto with --method skd / mixed-skd chooses draft lengths"]
    saved = json.loads((tmp_path / "r" / "run_config.json").read_text())
    assert "teacher_prices" not in saved["resolved"]
    assert "teacher_prices" not in ckpt.read_trainer_state(tmp_path / "r" / "final")


def test_a_real_measurement_on_tiny_models(char_tokenizer, tmp_path, one_thread):
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 8), [])
    train(_cfg(tmp_path / "r", steps=1, teacher_prices="measure"), models=(*_pair(), char_tokenizer), examples=ex)
    prices = json.loads((tmp_path / "r" / "run_config.json").read_text())["resolved"]["teacher_prices"]
    assert len(prices) == 6 and all(p > 0 for p in prices)

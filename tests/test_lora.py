"""LoRA students (peft): only adapters train, checkpoints hold adapters, final/ is a merged plain folder
that loads without peft and computes what base + adapters compute, resume is bit-exact, adapter folders
load in eval / speculative decoding, bad input is one line."""
import json

import pytest
import torch
from click.testing import CliRunner

peft = pytest.importorskip("peft")

from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig  # noqa: E402
from helpers import addition_examples  # noqa: E402

V = 103
pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(arch="llama"):
    from skd.core.presets import tiny_model

    teacher = tiny_model(arch, V, seed=1, hidden=32, layers=2)
    student = tiny_model(arch, V, seed=2, hidden=16, layers=1)
    teacher.requires_grad_(False)
    return teacher, student


def _cfg(out, *, steps=4, method="skd", **kw):
    return RunConfig(model=ModelConfig(), data=DataConfig(task="arith", val_limit=0),
                     train=TrainConfig(method=method, max_steps=steps, batch_size=4, eval_every=0, save_every=1,
                                       lr=1e-2, output_dir=str(out), keep_checkpoints=5, lora_r=4, **kw),
                     sample=SampleConfig(max_new_tokens=8, k=5, gamma=3))


def _ids(tok):
    return torch.tensor([tok("What is 12 + 7?")["input_ids"]])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_adapters_train_and_final_is_a_plain_merged_folder(char_tokenizer, tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from skd.core.train import train

    teacher, student = _pair(arch)
    base = {k: v.clone() for k, v in student.state_dict().items()}
    summary = train(_cfg(tmp_path / "run"), models=(teacher, student, char_tokenizer),
                    examples=(addition_examples(char_tokenizer, 8), []))
    lora_params = sum(p.numel() for n, p in student.named_parameters() if "lora_" in n)
    assert summary["trainable_parameters"] == lora_params > 0
    for name, p in student.named_parameters():           # base weights untouched, adapters moved
        if "lora_" not in name:
            assert torch.equal(p, base[name.replace(".base_layer.", ".")]), name
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in student.named_parameters() if "lora_B" in n)

    final = tmp_path / "run" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)   # plain transformers, no peft
    assert not any("lora_" in k for k in merged.state_dict())
    fresh_base = _pair(arch)[1]
    adapted = peft.PeftModel.from_pretrained(fresh_base, final / "adapter")
    x = _ids(char_tokenizer)
    with torch.no_grad():
        a, b, c = merged(x).logits, adapted(x).logits, student(x).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    step = tmp_path / "run" / "checkpoints" / "step-000002"
    assert (step / "adapter_model.safetensors").is_file() and not (step / "model.safetensors").exists()


def test_adapter_folder_loads_through_skd_as_base_plus_merged_adapters(char_tokenizer, tmp_path):
    from skd.core import models
    from skd.core.train import train

    student_dir = tmp_path / "student"
    teacher, student = _pair()
    student.save_pretrained(student_dir)
    char_tokenizer.save_pretrained(student_dir)
    cfg = _cfg(tmp_path / "run", steps=3)
    cfg = RunConfig(model=ModelConfig(student=str(student_dir)), data=cfg.data, train=cfg.train, sample=cfg.sample)
    train(cfg, models=(teacher, models.load_model(str(student_dir)), char_tokenizer),
          examples=(addition_examples(char_tokenizer, 8), []))
    step = tmp_path / "run" / "checkpoints" / "step-000002"
    meta = json.loads((step / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == str(student_dir.resolve())
    loaded = models.load_model(str(step))                  # base + adapters, merged: a plain model
    assert not any("lora_" in k for k in loaded.state_dict())
    manual = peft.PeftModel.from_pretrained(models.load_model(str(student_dir)), str(step)).merge_and_unload()
    x = _ids(char_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, manual(x).logits, rtol=0, atol=0)
    assert models.load_tokenizer(str(step)).get_vocab() == char_tokenizer.get_vocab()


def test_lora_resume_is_bit_exact(char_tokenizer, tmp_path):
    from safetensors.torch import load_file

    from skd.core import checkpoint as ckpt
    from skd.core.train import train

    ex = (addition_examples(char_tokenizer, 8), [])
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, lora_dropout=0.1), models=(*_pair(), char_tokenizer), examples=ex)
    train(_cfg(cut, lora_dropout=0.1), models=(*_pair(), char_tokenizer), examples=ex)
    for name in ("final", "checkpoints/step-000003"):
        ckpt.discard(cut / name)
    summary = train(_cfg(cut, lora_dropout=0.1, resume=True), models=(*_pair(), char_tokenizer), examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    for f in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(full / "final" / f)), load_file(str(cut / "final" / f))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), f
    m = lambda p: [json.loads(x)["loss"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert m(cut) == m(full)


def _distill(tmp_path, *extra):
    from skd.cli.main import main

    return CliRunner().invoke(main, ["distill", "--method", "skd", "--task", "arith", "--limit", "8",
                                     "--val-limit", "0", "--batch-size", "4", "--max-steps", "2",
                                     "--max-new-tokens", "8", "--save-every", "0",
                                     "--output-dir", str(tmp_path / "out"), *extra])


def test_lora_from_the_command_line_then_eval_and_speculative_take_the_adapter_folder(tmp_path):
    from skd.cli.main import main

    r = _distill(tmp_path, "--lora-r", "2", "--lora-target-modules", "q_proj,v_proj", "--save-every", "1")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert cfg["train"]["lora_r"] == 2 and cfg["train"]["lora_target_modules"] == ["q_proj", "v_proj"]
    adapter = tmp_path / "out" / "checkpoints" / "step-000001"
    r = CliRunner().invoke(main, ["eval", "--model", str(adapter), "--task", "arith", "--limit", "2",
                                  "--max-new-tokens", "8", "--output-dir", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ev" / "metrics.json").exists()
    r = CliRunner().invoke(main, ["bench", "speculative", "--teacher", "tiny-teacher", "--student", str(adapter),
                                  "--gamma", "2", "--prompts", "2", "--batch-size", "2", "--max-new-tokens", "8",
                                  "--output", str(tmp_path / "spec.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "spec.json").read_text())["results"][0]["outputs_match_teacher"] is True


@pytest.mark.parametrize("extra,expected", [
    (["--lora-r", "2", "--lora-target-modules", "no_such_proj"], "matches no module of the student"),
    (["--lora-alpha", "8"], "need --lora-r"),
    (["--lora-r", "-1"], "LoRA rank must be >= 0"),
    (["--lora-r", "2", "--lora-dropout", "1"], "LoRA dropout must be in [0, 1)"),
])
def test_bad_lora_options_are_one_line(tmp_path, monkeypatch, extra, expected):
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    r = _distill(tmp_path, *extra)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code not in (0, None) and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert expected in lines[0] and " — " in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_lora_without_peft_installed_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.delenv("SKD_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "peft", None)         # import peft -> ImportError
    r = _distill(tmp_path, "--lora-r", "2")
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code not in (0, None) and len(lines) == 1, r.output
    assert "skd[peft]" in lines[0]
    assert not (tmp_path / "out").exists()

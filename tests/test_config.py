"""Tests for core/config.py and core/run_options.py: defaults, the gkd divergence rule, the dtype rule,
the layering defaults < preset recipe < --config file < command line, and file errors naming the key."""
import dataclasses

import pytest
from click.testing import CliRunner

from skd.cli.main import main
from skd.core.config import (DIVERGENCE_NAMES, FLAT_KEYS, SECTIONS, ConfigValueError, DataConfig, ModelConfig,
                             RunConfig, SampleConfig, TrainConfig, resolve_dtype)
from skd.core.errors import SkdError
from skd.core.run_options import ConfigFile, distill_run_config, read_config_file, sft_run_config


@pytest.fixture
def resolved(monkeypatch, tmp_path):
    """resolved(*args): the RunConfig a `skd` command line builds, nothing trained."""
    from skd.cli import train_cmd

    seen = []
    monkeypatch.setattr(train_cmd, "_run", seen.append)

    def run(*args):
        r = CliRunner().invoke(main, list(args))
        assert r.exit_code == 0, r.output
        return seen.pop()

    return run


def test_distill_without_options_is_the_dataclass_defaults(resolved):
    assert resolved("distill") == RunConfig(train=TrainConfig(output_dir="runs/skd-arith"))
    sft = resolved("sft", "--model", "tiny-student")
    assert sft == RunConfig(model=ModelConfig(teacher=None), train=TrainConfig(method="sft", output_dir="runs/sft-arith"))


def test_every_flat_key_is_an_option_of_skd_sft_or_skd_distill():
    from skd.cli.train_cmd import distill, sft

    names = {p.name for cmd in (sft, distill) for p in cmd.params}
    assert set(FLAT_KEYS) <= names
    for name, (section, field) in FLAT_KEYS.items():
        assert field in {f.name for f in dataclasses.fields(SECTIONS[section])}, name


def test_gkd_defaults_to_the_generalised_jsd_and_refuses_other_divergences(resolved):
    assert TrainConfig(method="gkd").divergence == "jsd"
    assert TrainConfig().divergence == "fkl" and TrainConfig(method="on-policy").divergence == "fkl"
    assert resolved("distill", "--method", "gkd").train.divergence == "jsd"
    assert resolved("distill", "--method", "gkd", "--divergence", "jsd-normalized").train.divergence == "jsd-normalized"
    assert resolved("distill", "--method", "gkd", "--beta", "0.2").train.beta == 0.2
    for other in (d for d in DIVERGENCE_NAMES if not d.startswith("jsd")):
        with pytest.raises(ConfigValueError, match=f"--method gkd trains with the generalised JSD, not {other}"):
            TrainConfig(method="gkd", divergence=other)
        r = CliRunner().invoke(main, ["distill", "--method", "gkd", "--divergence", other])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_every_divergence_the_config_accepts_is_a_loss():
    from skd.core import losses

    assert set(DIVERGENCE_NAMES) == set(losses.DIVERGENCES)
    for name in DIVERGENCE_NAMES:
        losses.get_divergence(TrainConfig(divergence=name).divergence)


def test_dtype_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"


def test_range_errors_name_the_fields_they_check():
    with pytest.raises(ConfigValueError) as err:
        TrainConfig(batch_size=8, micro_batch_size=3)
    assert set(err.value.fields) == {"micro_batch_size", "batch_size"}
    with pytest.raises(ConfigValueError) as err:
        SampleConfig(k=-1)
    assert err.value.fields == ("k",)


def _file(tmp_path, text, allowed=("lr", "max_steps", "k", "batch_size", "micro_batch_size", "task", "limit")):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return read_config_file(str(path), allowed=set(allowed), cast=lambda name, v: int(v) if name != "lr" else float(v))


def test_config_file_keys_flat_and_in_sections_map_to_option_names(tmp_path):
    f = _file(tmp_path, "max-steps: 3\ntrain:\n  lr: 0.5\nsample:\n  k: 4\n")
    assert dict(f.values) == {"max_steps": 3, "lr": 0.5, "k": 4}
    assert f.keys["lr"] == "train.lr" and f.keys["max_steps"] == "max-steps"
    with pytest.raises(SkdError, match="unknown key 'gamma'"):  # an option of another command
        _file(tmp_path, "gamma: 3\n")
    with pytest.raises(SkdError, match="both set --max-steps"):
        _file(tmp_path, "max-steps: 3\ntrain:\n  max_steps: 4\n")
    with pytest.raises(SkdError, match="key 'k' has no value"):
        _file(tmp_path, "k:\n")


def test_layers_defaults_then_file_then_command_line_and_file_errors_name_the_key(tmp_path):
    file = ConfigFile(str(tmp_path / "run.yaml"), {"lr": 0.5, "max_steps": 3}, {"lr": "lr", "max_steps": "train.max_steps"})
    cfg = distill_run_config({"max_steps": 7}, file)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.batch_size) == (0.5, 7, 8)
    bad = ConfigFile("run.yaml", {"micro_batch_size": 3}, {"micro_batch_size": "micro-batch-size"})
    with pytest.raises(SkdError, match=r"^run.yaml, key 'micro-batch-size': micro batch size 3 must divide"):
        distill_run_config({}, bad)
    assert distill_run_config({"batch_size": 6}, bad).train.micro_batch_size == 3  # the command line fixes it


def test_sft_recipe_applies_to_the_preset_on_arith_below_file_and_options():
    from skd.core.presets import PRESET_SFT_RECIPES

    recipe = PRESET_SFT_RECIPES["tiny-teacher"]
    cfg = sft_run_config({})
    assert cfg.model.student == "tiny-teacher" and cfg.model.teacher is None and cfg.train.method == "sft"
    assert (cfg.train.max_steps, cfg.train.lr, cfg.data.limit) == (recipe["max_steps"], recipe["lr"], recipe["limit"])
    assert sft_run_config({"epochs": 2.0}).train.max_steps is None       # a length was asked for
    file = ConfigFile("run.yaml", {"task": "gsm8k"}, {"task": "task"})
    assert sft_run_config({}, file).train.max_steps is None               # no recipe off arith
    assert sft_run_config({"lr": 0.25}).train.lr == 0.25


def test_data_config_checks_limit():
    with pytest.raises(SkdError, match="--limit must be > 0"):
        DataConfig(limit=0)


def test_teacher_topk_and_loss_temperature_defaults_checks_and_options(resolved):
    from skd.core import objective
    from skd.core.config import CE_METHODS

    assert CE_METHODS == objective.CE_METHODS                       # the loss dispatches on objective's tuple
    assert (TrainConfig().teacher_topk, TrainConfig().loss_temperature) == (None, 1.0)
    cfg = resolved("distill", "--teacher-topk", "64", "--loss-temperature", "2")
    assert (cfg.train.teacher_topk, cfg.train.loss_temperature) == (64, 2.0)
    assert FLAT_KEYS["teacher_topk"] == ("train", "teacher_topk")
    assert FLAT_KEYS["loss_temperature"] == ("train", "loss_temperature")
    assert "target_topk" not in FLAT_KEYS and "target_temperature" not in FLAT_KEYS   # set by the loop
    for bad, field in ((dict(teacher_topk=0), "teacher_topk"), (dict(teacher_topk=True), "teacher_topk"),
                       (dict(loss_temperature=0.0), "loss_temperature"),
                       (dict(loss_temperature=float("nan")), "loss_temperature")):
        with pytest.raises(ConfigValueError) as err:
            TrainConfig(**bad)
        assert field in err.value.fields
    for method in CE_METHODS:
        with pytest.raises(ConfigValueError, match="--teacher-topk has no teacher logits"):
            TrainConfig(method=method, teacher_topk=4)
        with pytest.raises(ConfigValueError, match="--loss-temperature has no teacher distribution"):
            TrainConfig(method=method, loss_temperature=2.0)
        assert TrainConfig(method=method, loss_temperature=1.0).loss_temperature == 1.0
    with pytest.raises(ConfigValueError, match="target_topk must be >= 1"):
        SampleConfig(target_topk=0)
    out = CliRunner().invoke(main, ["distill", "--help"]).output
    assert "--teacher-topk" in out and "--loss-temperature" in out and "T^2" in out and "Hinton" in out

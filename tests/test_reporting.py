"""--report-to: TensorBoard's event files hold metrics.jsonl's scalars, resumes do not double steps,
a missing package is one line naming the extra (nothing written), W&B runs offline."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from skd.cli.main import main
from skd.core import checkpoint as ckpt
from skd.core.config import ConfigValueError, DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.reporting import TENSORBOARD_DIR, WANDB_DIR, numeric_scalars
from helpers import doubling_examples, tiny_llama_models

V = 103
pytestmark = pytest.mark.usefixtures("one_thread")


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_scalars_equal_metrics(run: Path) -> None:
    """Every numeric scalar of every metrics.jsonl line, read back at its step, equal to float32 precision."""
    acc, recs = _events(run), _metrics(run)
    expected: dict[str, list[tuple[int, float]]] = {}
    for rec in recs:
        for k, v in numeric_scalars(rec).items():
            expected.setdefault(k, []).append((rec["step"], v))
    assert set(acc.Tags()["scalars"]) == set(expected)
    for k, pairs in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(k)]
        assert [s for s, _ in got] == [s for s, _ in pairs], k           # each step once, in order
        for (_, value), (_, want) in zip(got, pairs):
            assert value == float(np.float32(want)), (k, value, want)


def _distill_args(out: Path, *extra) -> list[str]:
    return ["distill", "--method", "skd", "--teacher", "tiny-teacher", "--student", "tiny-student", "--limit", "16",
            "--max-steps", "3", "--batch-size", "4", "--k", "10", "--max-new-tokens", "16", "--eval-every", "3",
            "--val-limit", "2", "--save-every", "0", "--output-dir", str(out), *extra]


def test_distill_report_to_tensorboard_writes_the_scalars_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _distill_args(out, "--report-to", "tensorboard"), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    recs = _metrics(out)
    assert [x["step"] for x in recs] == [1, 2, 3] and "val_loss" in recs[-1]
    _assert_scalars_equal_metrics(out)
    acc = _events(out)
    for key in ("loss", "lr", "grad_norm", "correction_rate", "acceptance_rate", "val_loss", "tokens_per_s"):
        assert key in acc.Tags()["scalars"]
    # the resolved config: as text, and as the hyper-parameters of the HPARAMS tab
    text = acc.Tensors("run_config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip().strip("`")) == json.loads((out / "run_config.json").read_text())
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["train.report_to"].string_value == "tensorboard"
    assert info.hparams["sample.k"].number_value == 10


def test_numeric_scalars_leave_out_lists_none_text_and_the_step():
    rec = {"step": 3, "loss": 0.5, "generated_tokens": 12, "switch_positions": [1, -1], "mean_switch_position": None,
           "flag": True, "name": "x"}
    assert numeric_scalars(rec) == {"loss": 0.5, "generated_tokens": 12.0}


def _examples(tok, n):
    return doubling_examples(tok, n)


def _models(tok):
    return tiny_llama_models(tok)


def _cfg(out, **kw):
    t = dict(method="skd", max_steps=4, batch_size=2, eval_every=0, save_every=1, keep_checkpoints=5, lr=1e-3,
             output_dir=str(out))
    t.update(kw)
    return RunConfig(model=ModelConfig(), data=DataConfig(val_limit=0), train=TrainConfig(**t),
                     sample=SampleConfig(max_new_tokens=5, gamma=2, k=5))


def _cut_after_step_2(out: Path) -> None:
    """As if killed right after step 2's checkpoint (steps 3 and 4 were logged, their checkpoints not kept)."""
    for name in ("final", "checkpoints/step-000003"):   # the last step saves only `final`
        ckpt.discard(out / name)


def test_a_resumed_run_does_not_show_a_step_twice(char_tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from skd.core.train import train

    ex = (_examples(char_tokenizer, 5), [])
    out = tmp_path / "run"
    train(_cfg(out, report_to="tensorboard"), models=_models(char_tokenizer), examples=ex)
    first = {k: [(e.step, e.value) for e in _events(out).Scalars(k)] for k in ("loss", "lr")}
    _cut_after_step_2(out)
    summary = train(_cfg(out, report_to="tensorboard", resume=True), models=_models(char_tokenizer), examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    assert len(list((out / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4]
    _assert_scalars_equal_metrics(out)           # steps 3 and 4 once, with the resumed run's values
    # on the CPU the redone steps are bit-identical: the same curve as before the kill
    assert {k: [(e.step, e.value) for e in _events(out).Scalars(k)] for k in ("loss", "lr")} == first


def test_report_to_may_change_on_resume_and_old_run_configs_resume(char_tokenizer, tmp_path):
    """--report-to changes no result: a run without it resumes with it (TensorBoard then holds the
    resumed steps). A run config saved before a setting existed reads as that setting's default."""
    pytest.importorskip("tensorboard")
    from skd.core.train import train

    ex = (_examples(char_tokenizer, 5), [])
    out = tmp_path / "run"
    train(_cfg(out), models=_models(char_tokenizer), examples=ex)
    assert not (out / TENSORBOARD_DIR).exists()
    _cut_after_step_2(out)
    saved = out / "checkpoints" / "step-000002" / ckpt.RUN_CONFIG
    old = json.loads(saved.read_text())
    for key in ("report_to", "gradient_checkpointing"):      # as written by an skd without these settings
        del old["train"][key]
    saved.write_text(json.dumps(old))
    train(_cfg(out, report_to="tensorboard", resume=True), models=_models(char_tokenizer), examples=ex)
    assert [e.step for e in _events(out).Scalars("loss")] == [3, 4]
    assert json.loads((out / "run_config.json").read_text())["train"]["report_to"] == "tensorboard"


def test_overwrite_clears_the_tensorboard_folder(char_tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from skd.core.train import train

    ex = (_examples(char_tokenizer, 3), [])
    out = tmp_path / "run"
    train(_cfg(out, max_steps=2, report_to="tensorboard"), models=_models(char_tokenizer), examples=ex)
    train(_cfg(out, max_steps=1, report_to="tensorboard", overwrite=True), models=_models(char_tokenizer),
          examples=ex)
    assert [e.step for e in _events(out).Scalars("loss")] == [1]


@pytest.mark.parametrize("extra, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_is_one_line_naming_the_extra_and_nothing_is_written(tmp_path, monkeypatch, extra,
                                                                                module):
    monkeypatch.setitem(sys.modules, module, None)      # `import <module>` now raises ImportError
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _distill_args(out, "--report-to", extra))
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"pip install 'skd[{extra}]'" in lines[0], r.output
    assert not out.exists()


def test_only_the_main_process_reports(tmp_path):
    pytest.importorskip("tensorboard")
    from skd.core.reporting import Reporter, TensorBoardReporter, reporter_for

    assert isinstance(reporter_for("tensorboard"), TensorBoardReporter)
    other = reporter_for("tensorboard", main_process=False)
    assert type(other) is Reporter
    other.start(tmp_path, {"train": {}}, start_step=0)
    other.log(1, {"loss": 1.0})
    other.close()
    assert not list(tmp_path.iterdir())


def test_report_to_is_checked_like_every_setting(tmp_path):
    with pytest.raises(ConfigValueError, match="report-to"):
        TrainConfig(report_to="mlflow")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("report-to: comet\n")
    r = CliRunner().invoke(main, ["distill", "--config", str(cfg), "--output-dir", str(tmp_path / "x")])
    assert r.exit_code != 0 and "comet" in r.output and not (tmp_path / "x").exists()


def test_wandb_runs_offline_in_the_run_folder_and_a_resume_continues_its_run(char_tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("wandb")         # not installed in CI: `pip install 'skd[wandb]'` runs this
    from skd.core.train import train

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    ex = (_examples(char_tokenizer, 5), [])
    out = tmp_path / "run"
    train(_cfg(out, report_to="wandb"), models=_models(char_tokenizer), examples=ex)
    run_id = (out / WANDB_DIR / "skd-run-id").read_text().strip()
    runs = sorted((out / WANDB_DIR).glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
    _cut_after_step_2(out)
    train(_cfg(out, report_to="wandb", resume=True), models=_models(char_tokenizer), examples=ex)
    assert (out / WANDB_DIR / "skd-run-id").read_text().strip() == run_id
    assert len(sorted((out / WANDB_DIR).glob(f"offline-run-*-{run_id}"))) == 2
    assert os.environ.get("WANDB_MODE") is None        # offline was chosen for the run, not set for the process

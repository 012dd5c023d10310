"""`skd distill --stop S` adds S to the task's stop strings, `--no-task-stops` keeps only --stop; the
resolved set is what the sampler gets and what run_config.json lists under resolved.stop_strings."""
import json

import pytest
from click.testing import CliRunner

from skd.cli.main import main
from skd.core.stops import resolve_stop_strings
from skd.core.tasks import get_task


def test_resolution_adds_or_replaces():
    task = ("\n\n",)
    assert resolve_stop_strings(task, ()) == ("\n\n",)
    assert resolve_stop_strings(task, ("Q:", "\n\n", "Q:", "")) == ("\n\n", "Q:")   # repeats and "" dropped
    assert resolve_stop_strings(task, ("Q:",), keep_task=False) == ("Q:",)
    assert resolve_stop_strings(task, (), keep_task=False) == ()


@pytest.fixture
def sampled_stops(monkeypatch):
    """The stop strings every training batch is sampled with."""
    from skd.core import train

    seen = []
    real = train.sample_rank_batch

    def spy(*args, **kwargs):
        seen.append(kwargs["scfg"].stop_strings)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "sample_rank_batch", spy)
    return seen


@pytest.mark.parametrize("options, expected", [
    ([], ["\n\n"]),
    (["--stop", "Q:", "--stop", "=="], ["\n\n", "Q:", "=="]),
    (["--no-task-stops", "--stop", "Q:"], ["Q:"]),
    (["--no-task-stops"], []),
])
def test_distill_stop_options_reach_the_sampler_and_run_config(tmp_path, one_thread, sampled_stops, options,
                                                               expected):
    assert get_task("arith").stop_strings == ("\n\n",)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["distill", "--method", "on-policy", "--task", "arith", "--limit", "4",
                                  "--val-limit", "0", "--batch-size", "2", "--max-steps", "1", "--max-new-tokens", "4",
                                  "--save-every", "0", "--output-dir", str(out), *options])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["resolved"]["stop_strings"] == expected
    assert saved["sample"]["task_stops"] is ("--no-task-stops" not in options)
    assert sampled_stops and all(list(s) == expected for s in sampled_stops)


def test_a_config_file_sets_them_too(tmp_path):
    from skd.core.run_options import distill_run_config
    from skd.cli.options import config_file_values
    from skd.cli.train_cmd import distill

    config = tmp_path / "run.yaml"
    config.write_text("stop: ['Q:']\nsample:\n  task_stops: false\n")
    ctx = distill.make_context("distill", ["--config", str(config)])
    cfg = distill_run_config({}, config_file_values(ctx, str(config)))
    assert cfg.sample.stop_strings == ("Q:",) and cfg.sample.task_stops is False

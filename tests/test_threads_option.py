"""`--threads N` of skd sft / distill / eval reaches torch before any model loads, and stays a process
setting (no run setting, no --config key)."""
import pytest
import torch
from click.testing import CliRunner

from skd.cli.main import main
from skd.core.config import FLAT_KEYS
from skd.core.errors import SkdError


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.fixture
def load_spy(monkeypatch):
    """Every model load records torch's thread count, then stops the command with a one-line error."""
    from skd.core import models as model_lib

    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise SkdError("stopped by the test", "nothing to fix")

    monkeypatch.setattr(model_lib, "load_model", spy)
    monkeypatch.setattr(model_lib, "load_pair", spy)
    return seen


@pytest.mark.parametrize("command", [
    ["sft", "--task", "arith", "--limit", "4", "--val-limit", "0", "--max-steps", "1"],
    ["distill", "--task", "arith", "--limit", "4", "--val-limit", "0", "--max-steps", "1"],
    ["eval", "--task", "arith", "--model", "tiny-student", "--limit", "2"],
])
def test_threads_are_set_before_the_first_model_loads(command, tmp_path, threads_restored, load_spy):
    wanted = threads_restored + 1
    r = CliRunner().invoke(main, [*command, "--threads", str(wanted), "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and "stopped by the test" in r.output, r.output
    assert load_spy == [wanted] and torch.get_num_threads() == wanted


def test_without_threads_torch_keeps_its_own(tmp_path, threads_restored, load_spy):
    r = CliRunner().invoke(main, ["eval", "--task", "arith", "--model", "tiny-student", "--limit", "2",
                                  "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and load_spy == [threads_restored]


def test_threads_is_a_process_setting_not_a_run_setting(tmp_path, threads_restored, load_spy):
    from skd.core.evaluate_models import EvalConfig

    assert "threads" not in FLAT_KEYS and not hasattr(EvalConfig(models=("m",)), "threads")
    config = tmp_path / "run.yaml"
    config.write_text("threads: 2\n")
    r = CliRunner().invoke(main, ["distill", "--config", str(config), "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and "unknown key 'threads'" in r.output and not load_spy, r.output
    r = CliRunner().invoke(main, ["eval", "--model", "m", "--threads", "0"])
    assert r.exit_code == 2 and "--threads" in r.output

"""The `skd` CLI end to end on the built-in tiny models and the offline `arith` task."""
import json
import subprocess
import sys

from click.testing import CliRunner

from skd.cli.main import main


def _run(args, **kw):
    result = CliRunner().invoke(main, args, catch_exceptions=False, **kw)
    return result


def test_help_lists_only_working_commands_and_is_fast():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "from skd.cli.main import main"],
                          capture_output=True, text=True, check=True)
    heavy = [line for line in proc.stderr.splitlines() if line.rstrip().endswith((" torch", " transformers"))]
    assert not heavy, "skd --help must not import torch / transformers"
    out = _run(["--help"]).output
    for cmd in ("sft", "distill", "eval", "bench"):
        assert cmd in out
    assert "Examples:" in out


def test_version_prints_versions_and_backend():
    out = _run(["--version"]).output
    assert "skd " in out and "torch " in out and "transformers " in out and "ops backend cpp" in out


def test_distill_help_lists_the_model_aliases():
    out = _run(["distill", "--help"]).output
    assert "gemma-2b" in out and "google/gemma-2b" in out and "--k" in out


def test_sft_then_distill_then_eval_on_tiny_models(tmp_path):
    teacher_dir = tmp_path / "teacher"
    r = _run(["sft", "--model", "tiny-teacher", "--task", "arith", "--limit", "64", "--max-steps", "2",
              "--batch-size", "4", "--lr", "1e-3", "--eval-every", "2", "--val-limit", "4", "--save-every", "0",
              "--max-new-tokens", "48", "--output-dir", str(teacher_dir)])
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: supervised\nmax-steps: 5\nsample:\n  gamma: 3\n")
    r = _run(["distill", "--config", str(cfg), "--method", "skd", "--teacher", str(teacher_dir / "final"),
              "--student", "tiny-student", "--limit", "16", "--max-steps", "2", "--batch-size", "4", "--k", "10",
              "--max-new-tokens", "24", "--eval-every", "0", "--save-every", "0",
              "--output-dir", str(tmp_path / "skd")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "skd" / "run_config.json").read_text())
    assert saved["train"]["method"] == "skd"          # the command line overrides the file
    assert saved["train"]["max_steps"] == 2
    assert saved["sample"]["gamma"] == 3              # the file overrides the default
    assert saved["sample"]["k"] == 10
    metrics = [json.loads(x) for x in (tmp_path / "skd" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["proposed"] > 0 and 0 <= metrics[0]["correction_rate"] <= 1
    r = _run(["eval", "--model", str(tmp_path / "skd" / "final"), "--model", str(teacher_dir / "final"),
              "--task", "arith", "--limit", "6", "--max-new-tokens", "24", "--output-dir", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    subdirs = sorted(p for p in (tmp_path / "eval").iterdir() if p.is_dir())
    assert len(subdirs) == 2
    for d in subdirs:
        m = json.loads((d / "metrics.json").read_text())
        assert m["examples"] == 6 and 0.0 <= m["accuracy"] <= 1.0 and m["tokens_per_s"] > 0
        preds = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 6
        assert set(preds[0]) == {"prompt", "output", "extracted", "reference", "correct"}


def test_errors_are_one_line_without_traceback(tmp_path):
    r = CliRunner().invoke(main, ["distill", "--k", "-1", "--output-dir", str(tmp_path / "x")])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["eval", "--model", str(tmp_path / "missing"), "--task", "arith", "--limit", "2",
                                  "--output-dir", str(tmp_path / "e")])
    assert r.exit_code == 2
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert not (tmp_path / "e").exists()


def test_bench_speculative_on_tiny_models(tmp_path):
    out = tmp_path / "spec.json"
    r = _run(["bench", "speculative", "--gamma", "1,3", "--prompts", "4", "--batch-size", "4",
              "--max-new-tokens", "12", "--output", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert [x["gamma"] for x in res["results"]] == [1, 3]
    for x in res["results"]:
        assert x["outputs_match_teacher"] is True
        assert 0 <= x["acceptance_rate"] <= 1 and x["speedup"] > 0
        assert 0 < x["teacher_forwards_per_token"] <= 1
    assert (tmp_path / "spec.png").stat().st_size > 1000
    for key in ("device", "torch", "transformers", "ops_backend"):
        assert key in res["env"]


def test_tiny_teacher_sft_uses_its_recipe_unless_options_say_otherwise(monkeypatch, tmp_path):
    from skd.cli import train_cmd
    from skd.core.presets import PRESET_SFT_RECIPES

    seen = []
    monkeypatch.setattr(train_cmd, "_run", seen.append)  # resolve the configuration, train nothing
    runner = CliRunner()
    recipe = PRESET_SFT_RECIPES["tiny-teacher"]

    def resolved(*args):
        r = runner.invoke(main, ["sft", *args, "--output-dir", str(tmp_path / "x")])
        assert r.exit_code == 0, r.output
        return seen.pop()

    cfg = resolved("--model", "tiny-teacher", "--task", "arith")
    assert (cfg.data.limit, cfg.train.lr, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.batch_size,
            cfg.model.dtype) == (recipe["limit"], recipe["lr"], recipe["warmup_steps"], recipe["max_steps"],
                                 recipe["batch_size"], recipe["dtype"])
    cfg = resolved("--model", "tiny-teacher", "--task", "arith", "--lr", "2e-3", "--epochs", "1")
    assert cfg.train.lr == 2e-3 and cfg.train.max_steps is None and cfg.train.epochs == 1.0  # options win
    (tmp_path / "c.yaml").write_text("batch-size: 4\n")
    cfg = resolved("--model", "tiny-teacher", "--config", str(tmp_path / "c.yaml"))
    assert cfg.train.batch_size == 4 and cfg.train.max_steps == recipe["max_steps"]  # file over recipe
    cfg = resolved("--model", "tiny-student", "--task", "arith")  # no recipe: the paper's defaults
    assert (cfg.data.limit, cfg.train.lr, cfg.train.max_steps) == (1000, 1e-5, None)

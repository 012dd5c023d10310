"""The `skd` CLI end to end on the built-in tiny models and the offline `arith` task."""
import json
import shlex
import subprocess
import sys

import click
from click.testing import CliRunner

from skd.cli.main import main


def _run(args, **kw):
    result = CliRunner().invoke(main, args, catch_exceptions=False, **kw)
    return result


def _commands(group=main, path=("skd",)):
    """(command path, command) of every command under `group`, subcommands included."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def _parse(argv):
    """Parse `skd argv` as the shell would hand it over, down to the leaf command; run nothing."""
    cmd, args = main, list(argv)
    while isinstance(cmd, click.Group):
        assert args and args[0] in cmd.commands, f"no such command in {argv}"
        cmd = cmd.commands[args.pop(0)]
    return cmd.make_context(cmd.name, args)


def test_help_is_fast_and_every_example_it_shows_is_a_valid_command():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "from skd.cli.main import main"],
                          capture_output=True, text=True, check=True)
    heavy = [line for line in proc.stderr.splitlines() if line.rstrip().endswith((" torch", " transformers"))]
    assert not heavy, "skd --help must not import torch / transformers"
    examples = []
    for path, _ in [(("skd",), main), *_commands()]:
        r = _run([*path[1:], "--help"])
        assert r.exit_code == 0, (path, r.output)
        examples += [shlex.split(line, comments=True) for line in r.output.splitlines()
                     if line.strip().startswith("skd ")]
    assert examples
    for argv in examples:
        _parse(argv[1:])  # a click.UsageError here: the help shows a command that does not parse


def test_version_prints_versions_and_the_backend_this_build_reports():
    from skd.core import ops

    lines = _run(["--version"]).output.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["skd", "torch", "transformers"]
    assert lines[3] == f"ops backend {ops.backend()}"


def test_every_model_alias_in_the_help_resolves_to_what_it_says():
    from skd.core.hub import resolve

    out = _run(["distill", "--help"]).output
    listed = [line.split(None, 1) for line in out.split("Model aliases:", 1)[1].splitlines() if line.strip()]
    assert listed
    for name, target in listed:
        source = resolve(name)
        if target.startswith("built-in:"):
            assert source.kind == "preset", name
        else:
            assert (source.kind, source.location) == ("hub", target), name


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


def test_bench_speculative_int8_measures_each_student_twice_and_keeps_the_teachers_output(tmp_path):
    out = tmp_path / "spec.json"
    r = _run(["bench", "speculative", "--gamma", "2", "--prompts", "4", "--batch-size", "2",
              "--max-new-tokens", "8", "--int8", "--output", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert [x["student"] for x in res["results"]] == ["tiny-student", "tiny-student+int8"]
    assert res["config"]["drafts"] == ["tiny-student", "tiny-student+int8"] and res["config"]["int8"] is True
    assert all(x["outputs_match_teacher"] is True for x in res["results"])


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

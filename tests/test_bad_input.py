"""Bad input through the real command line: one line naming the problem and the fix, a non-zero exit,
no traceback, and no file touched.

Each case of CASES is (id, extra args, expected text), run with CASE_ENV's variables where it has
some; `{root}` in an argument is the prepared folder (tiny models, data files, existing runs). Also
here: a non-finite loss stops with a finite checkpoint, and the security checks (no pickle loading,
--trust-remote-code passed on).
"""
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from skd.cli.main import main

V = 103


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """Models, data files and run folders shared (read-only) by every case."""
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("world")
    tok = build_char_tokenizer()
    for name, seed, hidden, layers in (("teacher", 1, 32, 2), ("student", 2, 16, 1)):
        tiny_model("llama", V, seed=seed, hidden=hidden, layers=layers).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    other = build_char_tokenizer()                      # a teacher whose tokenizer has one more token
    other.add_tokens(["<extra>"])
    tiny_model("llama", len(other), seed=3, hidden=16, layers=1).save_pretrained(root / "other_tok")
    other.save_pretrained(root / "other_tok")
    (root / "broken").mkdir()                           # a model folder whose config cannot be read
    (root / "broken" / "config.json").write_text("{ not json")
    tok.save_pretrained(root / "broken")
    (root / "empty_dir").mkdir()
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(8)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n{\"question\": oops}\n")
    (root / "empty.jsonl").write_text("")
    (root / "nofield.jsonl").write_text(json.dumps({"prompt": "x", "answer": "#### 1"}) + "\n")
    (root / "data.txt").write_text("hello\n")
    long_q = "1 + " * 400 + "1"                         # ~1,600 characters > the 1,024-token context
    (root / "long.jsonl").write_text(json.dumps({"question": long_q, "answer": "#### 401"}) + "\n")
    (root / "unknown_key.yaml").write_text("max-steps: 2\nlearning-rate: 0.1\n")
    (root / "malformed.yaml").write_text("max-steps: [2\n")
    (root / "a_file").write_text("not a folder\n")
    # A finished run: its folder must survive a second run without --resume / --overwrite.
    r = CliRunner().invoke(main, _base(root, root / "done") + ["--max-steps", "1"])
    assert r.exit_code == 0, r.output
    return root


def _base(root: Path, out: Path) -> list[str]:
    return ["distill", "--method", "skd", "--teacher", str(root / "teacher"), "--student", str(root / "student"),
            "--data", str(root / "data.jsonl"), "--limit", "8", "--val-limit", "0", "--batch-size", "4",
            "--max-steps", "2", "--max-new-tokens", "6", "--gamma", "2", "--k", "5", "--save-every", "1",
            "--output-dir", str(out)]


CASES = [
    # (id, arguments added to / overriding the valid base command, split on spaces, expected text);
    # the argument "-" after an option drops that option from the base command.
    ("missing-model", "--student {root}/nope", "model folder not found"),
    ("model-is-a-file", "--student {root}/a_file", "is a file, not a model folder"),
    ("unreadable-model", "--student {root}/broken", "cannot load"),
    ("folder-without-config", "--teacher {root}/empty_dir", "no config.json"),
    ("hub-id-offline", "--student some-org/some-model-that-is-not-cached", "offline"),
    ("tokenizer-mismatch", "--teacher {root}/other_tok", "do not share a tokenizer"),
    ("malformed-jsonl-line", "--data {root}/bad.jsonl", "line 3"),
    ("empty-dataset", "--data {root}/empty.jsonl", "holds no examples"),
    ("data-missing-field", "--data {root}/nofield.jsonl", "no field 'question'"),
    ("data-unsupported-type", "--data {root}/data.txt", "unsupported file type"),
    ("data-not-found", "--data {root}/missing.jsonl", "data file not found"),
    ("unknown-task", "--task no-such-task", "unknown task"),
    ("unknown-method", "--method magic", "Invalid value for '--method'"),
    ("unknown-divergence", "--divergence kl2", "Invalid value for '--divergence'"),
    ("gkd-with-another-divergence", "--method gkd --divergence fkl", "--method gkd trains with the generalised JSD, not fkl"),
    ("unknown-option", "--learning-rate 1", "No such option"),
    ("negative-k", "--k -1", "k must be >= 0"),
    ("gamma-zero", "--gamma 0", "gamma must be auto or >= 1"),
    ("gamma-not-a-number", "--gamma often", "is neither auto nor an integer"),
    ("teacher-prices-not-numbers", "--gamma auto --teacher-prices 1.5,x", "teacher_prices must be comma-separated"),
    ("teacher-prices-zero", "--gamma auto --teacher-prices 1.5,0", "teacher_prices must be positive numbers"),
    ("beta-above-1", "--beta 1.5", "beta must be in [0, 1]"),
    ("beta-below-0", "--beta -0.1", "beta must be in [0, 1]"),
    ("negative-student-temperature", "--student-temperature -0.5", "student_temperature must be >= 0"),
    ("negative-teacher-temperature", "--teacher-temperature -1", "teacher_temperature must be >= 0"),
    ("top-p-zero", "--student-top-p 0", "student_top_p must be in (0, 1]"),
    ("teacher-topk-zero", "--teacher-topk 0", "teacher_topk must be >= 1"),
    ("teacher-topk-above-vocabulary", "--teacher-topk 104", "--teacher-topk 104 exceeds the vocabulary size 103"),
    ("teacher-topk-with-cross-entropy", "--method seqkd --teacher-topk 4", "--teacher-topk has no teacher logits"),
    ("teacher-topk-below-speckd-k", "--method speckd --teacher-topk 3",
     "--method speckd tests each token against the teacher's top 5 (--k), more than the 3 tokens"),
    ("loss-temperature-zero", "--loss-temperature 0", "loss_temperature must be a finite number > 0"),
    ("loss-temperature-negative", "--loss-temperature -2", "loss_temperature must be a finite number > 0"),
    ("loss-temperature-inf", "--loss-temperature inf", "loss_temperature must be a finite number > 0"),
    ("loss-temperature-nan", "--loss-temperature nan", "loss_temperature must be a finite number > 0"),
    ("loss-temperature-with-cross-entropy", "--method seqkd --loss-temperature 2",
     "--loss-temperature has no teacher distribution"),
    ("prompt-longer-than-context", "--data {root}/long.jsonl --limit 1", "the model's context is 1024"),
    ("limit-zero", "--limit 0", "--limit must be > 0"),
    ("max-new-tokens-zero", "--max-new-tokens 0", "max_new_tokens must be >= 1"),
    ("lr-zero", "--lr 0", "learning rate must be > 0"),
    ("epochs-zero", "--epochs 0 --max-steps -", "epochs must be > 0"),
    ("micro-batch-not-dividing", "--micro-batch-size 3", "must divide the batch size"),
    ("sample-chunk-not-dividing", "--sample-chunk 3", "sample chunk 3 must divide"),
    ("output-dir-is-a-file", "--output-dir {root}/a_file", "is a file"),
    ("output-dir-holds-a-run", "--output-dir {root}/done", "already holds another run"),
    ("resume-and-overwrite", "--resume --overwrite", "contradict"),
    ("resume-other-options", "--output-dir {root}/done --resume --k 7", "options differ"),
    ("config-unknown-key", "--config {root}/unknown_key.yaml", "unknown key 'learning-rate'"),
    ("config-malformed-yaml", "--config {root}/malformed.yaml", "cannot parse"),
    ("config-missing", "--config {root}/nope.yaml", "does not exist"),
    ("unknown-device", "--student-device tpu:9", "unknown device"),
    ("batch-not-divisible-by-processes", "", "multiple of 3"),
    ("fsdp-in-one-process", "--fsdp", "single process"),
    ("negative-switch-threshold", "--method adaswitch --switch-threshold -1", "switch threshold must be >= 0"),
    ("switch-window-zero", "--method adaswitch --switch-window 0", "switch window must be >= 1"),
    ("unknown-switch-divergence", "--method adaswitch --switch-divergence kl2",
     "Invalid value for '--switch-divergence'"),
    ("switch-option-without-adaswitch", "--switch-threshold 1.5", "is an AdaSwitch setting"),
    ("rejected-weight-above-1", "--method speckd --rejected-weight 2", "rejected weight must be in [0, 1]"),
    ("rejected-weight-without-speckd", "--method on-policy --rejected-weight 0.5", "is a SpecKD setting"),
    ("verification-without-speckd", "--speckd-verification greedy", "is a SpecKD setting"),
    ("speckd-with-k-zero", "--method speckd --k 0", "rejects every token"),
]

# The environment variables of the cases that need some (set for that case only).
CASE_ENV = {
    "hub-id-offline": {"HF_HUB_OFFLINE": "1"},
    "batch-not-divisible-by-processes": {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"},
}


def _args(root: Path, out: Path, extra: list) -> list[str]:
    args = _base(root, out)
    extra = [None if x is None else x.replace("{root}", str(root)) for x in extra]
    i = 0
    while i < len(extra):  # an option already in the base is replaced, a new one appended
        opt = extra[i]
        has_value = i + 1 < len(extra) and (extra[i + 1] is None or not str(extra[i + 1]).startswith("--")
                                            or re.fullmatch(r"-\d.*", str(extra[i + 1])))
        value = extra[i + 1] if has_value else None
        if opt in args:
            j = args.index(opt)
            del args[j: j + 2]
        if value is not None or not has_value:
            args += [opt] + ([value] if has_value else [])
        i += 2 if has_value else 1
    return args


def _case_extra(text: str) -> list:
    """A case's argument text as _args takes it: split on spaces, "-" (drop the option) as None."""
    return [None if x == "-" else x for x in text.split()]


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case_id,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_touches_nothing(world, tmp_path, monkeypatch, case_id, extra, expected):
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    for k, v in CASE_ENV.get(case_id, {}).items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    before = _snapshot(world)
    r = CliRunner().invoke(main, _args(world, out, _case_extra(extra)))
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code not in (0, None), r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert len(lines) == 1 and re.match(r"(\[rank \d+\] )?error: ", lines[0]), r.output
    assert expected in lines[0], lines[0]
    assert " — " in lines[0], f"no fix given: {lines[0]}"    # "error: <problem> — <fix>"
    assert _snapshot(world) == before                        # nothing existing was modified
    assert not out.exists()                                  # and nothing new was written


# Cases of one option and a value out of its range: a --config file holding that value, flat or in
# the option's section, must fail the same check, naming the file and the key.
RANGE_CASES = ["negative-k", "gamma-zero", "beta-above-1", "beta-below-0", "negative-student-temperature",
               "negative-teacher-temperature", "top-p-zero", "teacher-topk-zero", "loss-temperature-zero",
               "limit-zero", "max-new-tokens-zero", "lr-zero", "micro-batch-not-dividing", "sample-chunk-not-dividing"]


def _config_case(world, tmp_path, text: str, drop: str | None = None):
    """Run the valid base command with a --config file holding `text` (and without option `drop`)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    args = _base(world, tmp_path / "out")
    if drop in args:
        del args[args.index(drop): args.index(drop) + 2]
    r = CliRunner().invoke(main, args + ["--config", str(cfg)])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert str(cfg) in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.mark.parametrize("case_id", RANGE_CASES)
@pytest.mark.parametrize("layout", ["flat", "section"])
def test_config_file_values_get_the_checks_of_their_options(world, tmp_path, monkeypatch, case_id, layout):
    from skd.core.config import FLAT_KEYS

    monkeypatch.delenv("SKD_DEBUG", raising=False)
    _, extra, expected = next(c for c in CASES if c[0] == case_id)
    option, value = extra.split()
    name = option[2:].replace("-", "_")
    section, field = FLAT_KEYS[name]
    key = option[2:] if layout == "flat" else f"{section}.{field}"
    text = f"{key}: {value}\n" if layout == "flat" else f"{section}:\n  {field}: {value}\n"
    line = _config_case(world, tmp_path, text, drop=option)
    assert expected in line and f"key '{key}'" in line, line


def test_config_unknown_key_in_a_section(world, tmp_path, monkeypatch):
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    line = _config_case(world, tmp_path, "train:\n  max_steps: 2\n  learning_rate: 0.1\n")
    assert "unknown key 'train.learning_rate'" in line, line


def test_config_value_of_the_wrong_type(world, tmp_path, monkeypatch):
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    line = _config_case(world, tmp_path, "max-steps: ten\n", drop="--max-steps")
    assert "key 'max-steps'" in line and "'ten' is not a valid integer" in line, line
    line = _config_case(world, tmp_path, "sample:\n  k: [1, 2]\n", drop="--k")
    assert "key 'sample.k'" in line and "single value" in line, line


def test_config_value_out_of_range(world, tmp_path, monkeypatch):
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    for text, key in (("lr: -1\n", "lr"), ("train:\n  lr: -1\n", "train.lr")):
        line = _config_case(world, tmp_path, text)
        assert f"key '{key}'" in line and "learning rate must be > 0 (got -1.0)" in line, line


def test_debug_shows_the_traceback(world, tmp_path, monkeypatch):
    from skd.core.errors import SkdError

    monkeypatch.delenv("SKD_DEBUG", raising=False)
    r = CliRunner().invoke(main, ["--debug"] + _args(world, tmp_path / "o", ["--k", "-1"]))
    monkeypatch.delenv("SKD_DEBUG", raising=False)           # --debug sets it for the process
    assert isinstance(r.exception, SkdError)


def test_non_finite_loss_stops_with_a_finite_checkpoint_of_the_last_good_step(world, tmp_path, monkeypatch):
    from skd.core import losses

    real = losses.get_divergence
    calls = {"n": 0}

    def poisoned(*a, **kw):
        fn = real(*a, **kw)

        def div(student, teacher, weights):
            calls["n"] += 1
            total, count = fn(student, teacher, weights)
            return (total * float("nan") if calls["n"] >= 3 else total), count   # step 3 goes bad
        return div

    monkeypatch.setattr(losses, "get_divergence", poisoned)
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _args(world, out, ["--max-steps", "5", "--save-every", "0"]))
    lines = [x for x in r.output.splitlines() if x.strip().startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "non-finite" in lines[0] and "step 3" in lines[0] and "step-000002" in lines[0]
    assert not (out / "final").exists()
    state = json.loads((out / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["step"] == 2
    weights = load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_huge_learning_rate_never_saves_a_nan_model(world, tmp_path, monkeypatch):
    monkeypatch.delenv("SKD_DEBUG", raising=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _args(world, out, ["--lr", "1e30", "--grad-clip", "0", "--max-steps", "6"]))
    assert r.exit_code == 2 and "non-finite" in r.output, r.output
    for f in out.rglob("model.safetensors"):
        assert all(bool(torch.isfinite(w).all()) for w in load_file(str(f)).values()), f
    assert not (out / "final").exists()


# --------------------------------------------------------------------------- security

SOURCE_DIRS = [Path(__file__).resolve().parents[1] / d for d in ("core", "cli", "benchmarks")]


def test_no_torch_load_without_weights_only_and_no_pickle():
    offenders = []
    for d in SOURCE_DIRS:
        for f in d.rglob("*.py"):
            text = f.read_text()
            for m in re.finditer(r"torch\.load\(", text):
                call = text[m.start(): text.find(")", m.end()) + 1]
                if "weights_only=True" not in call:
                    offenders.append(f"{f.name}: {call}")
            for m in re.finditer(r"\bpickle\.loads?\(|\bdill\.|cloudpickle", text):
                offenders.append(f"{f.name}: {m.group(0)}")
    assert not offenders, offenders


def test_trust_remote_code_is_off_unless_asked_and_passed_through(world, tmp_path, monkeypatch):
    from helpers import spy_keyword
    from skd.core import models as model_lib

    seen = spy_keyword(monkeypatch, model_lib, "load_pair", "trust_remote_code")
    for flag, out in (([], "a"), (["--trust-remote-code"], "b")):
        r = CliRunner().invoke(main, _args(world, tmp_path / out, ["--max-steps", "1"]) + flag)
        assert r.exit_code == 0, r.output
    assert seen == [False, True]
    saved = json.loads((tmp_path / "b" / "run_config.json").read_text())
    assert saved["model"]["trust_remote_code"] is True


def test_checkpoints_hold_safetensors_and_no_pickled_weights(world, tmp_path):
    r = CliRunner().invoke(main, _args(world, tmp_path / "r", ["--max-steps", "1"]))
    assert r.exit_code == 0, r.output
    final = tmp_path / "r" / "final"
    assert (final / "model.safetensors").is_file()
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pkl"))
    torch.load(final / "training_state.pt", weights_only=True)   # loadable without unpickling code

"""Exact resume: a run killed (-9) after a checkpoint and resumed ends bit-identical to an uninterrupted run.

The kill / SIGTERM tests drive the real command line in subprocesses (one thread each, so that the
float reductions, and hence the weights, are reproducible bit for bit); the rest call train().
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from skd.core import checkpoint as ckpt
from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.errors import SkdError
from skd.core.train import TIMING_KEYS as TIMING
from helpers import doubling_examples, tiny_llama_models

V = 103
STEPS = 10


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = build_char_tokenizer()
    for name, seed, hidden, layers in (("teacher", 1, 32, 2), ("student", 2, 16, 1)):
        tiny_model("llama", V, seed=seed, hidden=hidden, layers=layers).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    # A small local file: generating the built-in arith splits would cost each process seconds.
    rows = [{"question": f"What is {i} + {2 * i}?", "answer": f"{i} + {2 * i} = {3 * i}\n#### {3 * i}"}
            for i in range(12)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def _args(models: Path, out: Path, *extra) -> list[str]:
    return ["distill", "--method", "skd", "--teacher", str(models / "teacher"), "--student", str(models / "student"),
            "--data", str(models / "data.jsonl"), "--val-data", str(models / "data.jsonl"), "--limit", "12",
            "--val-limit", "2", "--eval-every", "4", "--batch-size", "4", "--max-new-tokens", "8",
            "--gamma", "3", "--k", "5", "--lr", "1e-3", "--max-steps", str(STEPS), "--save-every", "1",
            "--output-dir", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _skd(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skd", *args], env=_env(), capture_output=True, text=True,
                          timeout=180, **kw)


def _metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference(model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _skd(_args(model_dirs, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _newest_step(out: Path) -> int:
    best = ckpt.find_latest_checkpoint(out) if out.is_dir() else None
    return ckpt.read_trainer_state(best)["step"] if best is not None else 0


def test_kill_9_after_a_checkpoint_then_resume_is_bit_identical(model_dirs, reference, tmp_path):
    out = tmp_path / "run"
    kill_after = random.Random(11).randint(1, STEPS - 3)   # the kill itself lands anywhere in the next step / save
    proc = subprocess.Popen([sys.executable, "-m", "skd", *_args(model_dirs, out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _newest_step(out) < kill_after:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "final").exists()
    resumed_from = _newest_step(out)
    assert kill_after <= resumed_from < STEPS

    r = _skd(_args(model_dirs, out, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(out / "final", reference / "final")
    assert _metrics(out) == _metrics(reference)            # truncated and continued, nothing doubled
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"].endswith(f"step-{resumed_from:06d}")
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def test_sigterm_saves_the_last_step_and_exits_143_then_resumes_exactly(model_dirs, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "skd", *_args(model_dirs, out, "--save-every", "0")],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM" in err and "--resume" in err
    saved = ckpt.find_latest_checkpoint(out)
    step = ckpt.read_trainer_state(saved)["step"]
    assert saved.name == f"step-{step:06d}" and len(_metrics(out)) == step < STEPS

    r = _skd(_args(model_dirs, out, "--save-every", "0", "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(out / "final", reference / "final")


# --------------------------------------------------------------------------- in-process


def _examples(tok, n):
    return doubling_examples(tok, n)


def _models(tok):
    return tiny_llama_models(tok)


def _cfg(out, **kw):
    t = dict(method="skd", max_steps=4, batch_size=2, eval_every=0, save_every=1, lr=1e-3, output_dir=str(out))
    t.update(kw)
    return RunConfig(model=ModelConfig(), data=DataConfig(val_limit=0), train=TrainConfig(**t),
                     sample=SampleConfig(max_new_tokens=5, gamma=2, k=5))


def test_resume_ignores_folders_without_the_completion_marker(char_tokenizer, tmp_path):
    from skd.core.train import train

    out = tmp_path / "run"
    train(_cfg(out, keep_checkpoints=5), models=_models(char_tokenizer), examples=(_examples(char_tokenizer, 5), []))
    # Simulate kills: mid-save of step 4 (no marker), a torn marker, and a leftover temporary folder.
    ck = out / "checkpoints"
    ckpt.discard(out / "final")
    (ck / "step-000003" / ckpt.MARKER).write_text('{"step": 3, "compl')
    (ck / "step-000002" / ckpt.MARKER).unlink()
    (ck / ".step-000004.tmp-x").mkdir()
    assert ckpt.find_latest_checkpoint(out) == ck / "step-000001"
    summary = train(_cfg(out, resume=True, keep_checkpoints=5), models=_models(char_tokenizer),
                    examples=(_examples(char_tokenizer, 5), []))
    assert summary["resumed_from"] == str(ck / "step-000001") and summary["steps"] == 4
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not (ck / ".step-000004.tmp-x").exists()


def test_resume_with_different_options_is_refused_and_changes_nothing(char_tokenizer, tmp_path):
    from skd.core.train import train

    out = tmp_path / "run"
    ex = (_examples(char_tokenizer, 4), [])
    train(_cfg(out, max_steps=2), models=_models(char_tokenizer), examples=ex)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SkdError, match=r"options differ.*lr"):
        train(_cfg(out, max_steps=2, lr=5e-4, resume=True), models=_models(char_tokenizer), examples=ex)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(SkdError, match="contradict"):
        _cfg(out, resume=True, overwrite=True)


def test_resume_of_a_run_saved_before_a_setting_existed_takes_that_settings_default(char_tokenizer, tmp_path):
    from skd.core.train import train

    out = tmp_path / "run"
    ex = (_examples(char_tokenizer, 4), [])
    train(_cfg(out, max_steps=3, keep_checkpoints=3), models=_models(char_tokenizer), examples=ex)
    ckpt.discard(out / "final")
    for f in [out / "run_config.json", *out.glob("checkpoints/*/" + ckpt.RUN_CONFIG)]:   # as an older skd wrote it
        saved = json.loads(f.read_text())
        del saved["train"]["lora_r"], saved["sample"]["switch_window"]
        f.write_text(json.dumps(saved))
    summary = train(_cfg(out, max_steps=3, keep_checkpoints=3, resume=True), models=_models(char_tokenizer),
                    examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    with pytest.raises(SkdError, match=r"options differ.*lora_r 0 -> 2"):
        train(_cfg(out, max_steps=3, resume=True, lora_r=2), models=_models(char_tokenizer), examples=ex)


def test_resume_of_an_older_run_with_stop_strings_keeps_them_replacing_the_tasks(char_tokenizer, tmp_path):
    from skd.core.train import train

    out = tmp_path / "run"
    ex = (_examples(char_tokenizer, 4), [])
    stop = dict(stop_strings=("\n\n",))

    def cfg(**kw):
        c = _cfg(out, max_steps=3, keep_checkpoints=3, **kw)
        return RunConfig(model=c.model, data=c.data, train=c.train, sample=SampleConfig(**{**c.sample.__dict__,
                                                                                           **stop, **kw_s}))
    kw_s = dict(task_stops=False)
    train(cfg(), models=_models(char_tokenizer), examples=ex)
    ckpt.discard(out / "final")
    for f in [out / "run_config.json", *out.glob("checkpoints/*/" + ckpt.RUN_CONFIG)]:   # as an older skd wrote it
        saved = json.loads(f.read_text())
        del saved["sample"]["task_stops"]
        f.write_text(json.dumps(saved))
    kw_s = dict(task_stops=True)
    with pytest.raises(SkdError, match=r"options differ.*task_stops False -> True"):
        train(cfg(resume=True), models=_models(char_tokenizer), examples=ex)
    kw_s = dict(task_stops=False)
    assert train(cfg(resume=True), models=_models(char_tokenizer), examples=ex)["resumed_from"].endswith("step-000002")


def test_resume_without_any_checkpoint_starts_from_scratch(char_tokenizer, tmp_path):
    from skd.core.train import train

    summary = train(_cfg(tmp_path / "new", max_steps=1, resume=True), models=_models(char_tokenizer),
                    examples=(_examples(char_tokenizer, 2), []))
    assert summary["steps"] == 1 and summary["resumed_from"] is None


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_it_starts_fresh(char_tokenizer, tmp_path):
    """A preempted job's command rerun with --resume: its own files but no complete checkpoint yet."""
    from skd.core.train import train

    ex = (_examples(char_tokenizer, 4), [])
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, max_steps=2, save_every=0), models=_models(char_tokenizer), examples=ex)
    train(_cfg(cut, max_steps=2, save_every=0), models=_models(char_tokenizer), examples=ex)
    ckpt.discard(cut / "final")                       # as if killed while saving `final`
    (cut / "summary.json").unlink()
    assert ckpt.find_latest_checkpoint(cut) is None and (cut / "metrics.jsonl").exists()
    events = []
    summary = train(_cfg(cut, max_steps=2, save_every=0, resume=True), on_event=lambda k, p: events.append((k, p)),
                    models=_models(char_tokenizer), examples=ex)
    notices = [p["message"] for k, p in events if k == "notice"]
    assert notices == [f"no checkpoint in {cut}: starting a fresh run"]
    assert [k for k, _ in events].index("notice") < [k for k, _ in events].index("start")
    assert summary["resumed_from"] is None and summary["steps"] == 2
    assert _metrics(cut) == _metrics(full)            # the old lines are redone, not doubled
    _assert_same_weights(cut / "final", full / "final")
    # a run that resumes from a checkpoint says nothing of the kind
    events.clear()
    summary = train(_cfg(cut, max_steps=2, save_every=0, resume=True), on_event=lambda k, p: events.append((k, p)),
                    models=_models(char_tokenizer), examples=ex)
    assert summary["resumed_from"] == str(cut / "final") and "notice" not in [k for k, _ in events]


def test_resume_without_a_checkpoint_refuses_another_runs_files_and_changes_nothing(char_tokenizer, tmp_path):
    from skd.core.train import train

    ex = (_examples(char_tokenizer, 4), [])
    out = tmp_path / "run"
    train(_cfg(out, max_steps=2, save_every=0), models=_models(char_tokenizer), examples=ex)
    ckpt.discard(out / "final")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SkdError, match=r"another run's files.*lr"):       # other options
        train(_cfg(out, max_steps=2, save_every=0, lr=5e-4, resume=True), models=_models(char_tokenizer),
              examples=ex)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    (out / "run_config.json").unlink()                                    # files of a run of unknown options
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SkdError, match=r"another run's files \(metrics.jsonl, summary.json\)"):
        train(_cfg(out, max_steps=2, save_every=0, resume=True), models=_models(char_tokenizer), examples=ex)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_sigint_in_process_saves_and_exits_130(model_dirs, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) through the CLI: the step finishes, a checkpoint is saved, exit code 130."""
    from skd.cli.main import main

    import skd.core.train as train_mod

    real = train_mod._Run._step

    def interrupt_during_step_2(self, step, *a, **kw):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)   # handled at once: the flag is set while step 2 runs
        return real(self, step, *a, **kw)

    monkeypatch.setattr(train_mod._Run, "_step", interrupt_during_step_2)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)   # Python's default, or SIG_IGN in a job started in the background
    r = CliRunner().invoke(main, _args(model_dirs, out, "--save-every", "0"))
    assert r.exit_code == 130, r.output
    assert "SIGINT" in r.output and "Traceback" not in r.output
    assert ckpt.read_trainer_state(out / "checkpoints" / "step-000002")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before   # the handler the run found is put back


@pytest.mark.parametrize("arch", ["llama", "gpt2"])   # gpt2 ties lm_head to the embeddings
def test_in_process_resume_from_an_older_checkpoint_is_bit_identical(char_tokenizer, tmp_path, arch):
    from skd.core.presets import tiny_model
    from skd.core.train import train

    def models():
        return (tiny_model(arch, V, seed=1, hidden=32, layers=2), tiny_model(arch, V, seed=2, hidden=16, layers=1),
                char_tokenizer)

    ex = (_examples(char_tokenizer, 5), _examples(char_tokenizer, 2))
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, method="mixed-skd", eval_every=2, keep_checkpoints=3), models=models(), examples=ex)
    train(_cfg(cut, method="mixed-skd", eval_every=2, keep_checkpoints=3), models=models(), examples=ex)
    for name in ("final", "checkpoints/step-000003"):            # as if killed right after step 2's save
        ckpt.discard(cut / name)
    summary = train(_cfg(cut, method="mixed-skd", eval_every=2, keep_checkpoints=3, resume=True), models=models(),
                    examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    _assert_same_weights(cut / "final", full / "final")
    assert _metrics(cut) == _metrics(full)


def test_resume_with_group_by_length_is_bit_identical(char_tokenizer, tmp_path):
    from skd.core.presets import tiny_model
    from skd.core.train import train

    def models():
        return (tiny_model("llama", V, seed=1, hidden=32, layers=2), tiny_model("llama", V, seed=2, hidden=16, layers=1),
                char_tokenizer)

    ex = (_examples(char_tokenizer, 5), _examples(char_tokenizer, 2))
    kw = dict(method="supervised", group_by_length=True, keep_checkpoints=3)      # 4 steps x 2 > 5: two epochs
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, **kw), models=models(), examples=ex)
    train(_cfg(cut, **kw), models=models(), examples=ex)
    for name in ("final", "checkpoints/step-000003"):           # as if killed right after step 2's save
        ckpt.discard(cut / name)
    summary = train(_cfg(cut, resume=True, **kw), models=models(), examples=ex)
    assert summary["resumed_from"].endswith("step-000002")
    _assert_same_weights(cut / "final", full / "final")
    assert _metrics(cut) == _metrics(full)


def test_deterministic_flag_turns_on_deterministic_kernels_for_the_run_only(char_tokenizer, tmp_path):
    """--deterministic: on during the run (an op without a deterministic kernel would raise), the
    previous settings back afterwards; on the CPU the weights are those of a default run."""
    from skd.core.train import train

    seen = []
    on_event = lambda kind, p: seen.append(torch.are_deterministic_algorithms_enabled()) if kind == "step" else None
    before = torch.are_deterministic_algorithms_enabled()
    train(_cfg(tmp_path / "det", deterministic=True), on_event=on_event, models=_models(char_tokenizer),
          examples=(_examples(char_tokenizer, 6), []))
    assert seen and all(seen) and torch.are_deterministic_algorithms_enabled() == before
    train(_cfg(tmp_path / "plain"), models=_models(char_tokenizer), examples=(_examples(char_tokenizer, 6), []))
    _assert_same_weights(tmp_path / "det" / "final", tmp_path / "plain" / "final")
    state = json.loads((tmp_path / "det" / "final" / "skd_run_config.json").read_text())
    assert state["train"]["deterministic"] is True


def test_deterministic_option_on_the_command_line(model_dirs, reference, tmp_path):
    r = _skd(_args(model_dirs, tmp_path / "run", "--deterministic"))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(tmp_path / "run" / "final", reference / "final")


def test_cli_resume_without_checkpoint_says_it_starts_fresh(tmp_path):
    from click.testing import CliRunner

    from skd.cli.main import main

    out = tmp_path / "new-run"
    r = CliRunner().invoke(main, ["distill", "--method", "supervised", "--max-steps", "1", "--batch-size", "2",
                                  "--limit", "4", "--max-new-tokens", "8", "--val-limit", "0", "--save-every", "0",
                                  "--output-dir", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert f"no checkpoint in {out}: starting a fresh run" in r.output.replace("\n", "")
    assert (out / "final" / "config.json").is_file()

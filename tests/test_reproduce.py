"""`skd bench reproduce` end to end at the tiniest scale: tiny models built here, a few steps, a few problems."""
import json
import statistics

import pytest
from click.testing import CliRunner

from skd.cli.main import main

ARGS = ["--regimes", "12", "--inits", "weak,strong", "--methods", "sft,supervised,skd", "--ks", "1,V",
        "--seeds", "0,1", "--weak-steps", "1", "--strong-steps", "2", "--distill-steps", "2", "--batch-size", "2",
        "--eval-examples", "3", "--spec-prompts", "2", "--max-new-tokens", "6", "--dtype", "float32"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _invoke(args):
    return CliRunner().invoke(main, ["bench", "reproduce", *args], catch_exceptions=False)


class _Captured(Exception):
    pass


def test_every_knob_reaches_the_study_config_over_quick(tmp_path, monkeypatch):
    """Each option given on the command line ends up in the config the study runs with, also where
    --quick has its own value for it (explicit options win over the preset)."""
    from skd.core.studies import reproduce as rep

    seen = {}

    def capture(cfg, on_event=None):
        seen["cfg"] = cfg
        raise _Captured

    monkeypatch.setattr(rep, "run", capture)
    args = ["--quick", "--run-dir", str(tmp_path / "r"), "--output-dir", str(tmp_path / "o"),
            "--methods", "sft,skd", "--regimes", "12", "--init-regime", "30", "--inits", "weak", "--ks", "2,V", "--seeds", "3,4",
            "--weak-steps", "7", "--mid-steps", "8", "--strong-steps", "9", "--init-lr", "0.002", "--distill-steps", "5",
            "--batch-size", "3", "--lr", "0.0007", "--gamma", "2", "--eval-examples", "11", "--spec-prompts", "6",
            "--spec-gamma", "3", "--max-new-tokens", "33", "--dtype", "float32", "--init-seed", "4"]
    with pytest.raises(_Captured):
        _invoke(args)
    cfg = seen["cfg"]
    assert cfg.quick and cfg.run_dir == str(tmp_path / "r") and cfg.output_dir == str(tmp_path / "o")
    assert (cfg.methods, cfg.regimes, cfg.inits, cfg.seeds) == (("sft", "skd"), ("12",), ("weak",), (3, 4))
    assert cfg.init_regime == "30" and rep.init_prompts(cfg, "12") == 30
    assert cfg.ks == rep.parse_ks("2,V")
    assert (cfg.weak_steps, cfg.mid_steps, cfg.strong_steps, cfg.init_lr, cfg.distill_steps) == (7, 8, 9, 0.002, 5)
    assert (cfg.batch_size, cfg.lr, cfg.gamma, cfg.eval_examples) == (3, 0.0007, 2, 11)
    assert (cfg.spec_prompts, cfg.spec_gamma, cfg.max_new_tokens, cfg.dtype) == (6, 3, 33, "float32")
    assert cfg.init_seed == 4 and rep.init_seeds(cfg) == (4,) and rep.plan(cfg)["inits"] == 1
    assert "reproduce" in CliRunner().invoke(main, ["bench", "--help"]).output   # listed under `skd bench`


def test_study_end_to_end_records_failures_and_resumes(tmp_path, teacher_dir, monkeypatch):
    from skd.core.studies import reproduce as rep

    real = rep.Study.distil

    def flaky(self, regime, init, seed, method, k, init_dir):
        if (method, seed) == ("supervised", 1):
            raise RuntimeError("injected failure")
        return real(self, regime, init, seed, method, k, init_dir)

    monkeypatch.setattr(rep.Study, "distil", flaky)
    run_dir, out_dir = tmp_path / "runs", tmp_path / "out"
    args = ["--run-dir", str(run_dir), "--output-dir", str(out_dir), "--teacher", str(teacher_dir), *ARGS]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    assert "16 distillation runs" in r.output

    res = json.loads((out_dir / "reproduce.json").read_text())
    assert res["schema"] == rep.SCHEMA and res["vocab_size"] == 103
    assert {"torch", "transformers", "skd"} <= set(res["env"])
    assert res["config"]["distill_steps"] == 2 and res["teacher"]["eval"]["test_examples"] == 3
    assert len(res["inits"]) == 4 and all(i["status"] == "ok" for i in res["inits"])
    runs = res["runs"]
    assert len(runs) == 16                     # 1 regime x 2 inits x 2 seeds x (sft, supervised, skd K=1, K=V)
    failed = [x for x in runs if x["status"] != "ok"]
    assert [(x["method"], x["seed"]) for x in failed] == [("supervised", 1)] * 2
    assert "injected failure" in failed[0]["error"]
    # arith's graded score (partial credit of the worked lines) is measured beside exact match
    ok_runs = [x for x in runs if x["status"] == "ok"]
    assert all(0.0 <= x["test_graded"] <= 1.0 for x in ok_runs)
    assert all(r["test_graded"]["n"] == r["n_ok"] for r in res["summary"])
    for x in runs:
        if x["status"] == "ok":
            assert 0 <= x["test_accuracy"] <= 1 and x["test_examples"] == 3
            assert {"acceptance_rate", "teacher_forwards_per_token"} <= set(x["draft"])
            assert [s for s, _ in x["correction_curve"]] == [1, 2] and x["train_wall_s"] > 0
    assert {x["k"] for x in runs if x["method"] == "skd"} == {1, 103}
    kv = [x for x in runs if x["variant"] == "skd-kV"]
    assert all(c == 0 for x in kv for _, c in x["correction_curve"])   # K = V: nothing is ever replaced

    # mean and sample std come from the runs themselves
    for row in res["summary"]:
        if row["method"] == "init":
            continue
        mine = [x for x in runs if (x["regime"], x["init"], x["variant"], x["status"]) ==
                (row["regime"], row["init"], row["variant"], "ok")]
        accs = [x["test_accuracy"] for x in mine]
        assert row["n_ok"] == len(accs) and row["test_accuracy"]["values"] == accs
        assert row["test_accuracy"]["mean"] == pytest.approx(statistics.fmean(accs))
        if len(accs) >= 2:
            assert row["test_accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
        else:
            assert row["test_accuracy"]["std"] is None and row["n_failed"] == 1
        acc_rates = [x["draft"]["acceptance_rate"] for x in mine]
        assert row["draft_acceptance"]["mean"] == pytest.approx(statistics.fmean(acc_rates))
    assert [r_["variant"] for r_ in res["summary"]][:5] == ["init", "sft", "supervised", "skd-k1", "skd-kV"]

    md = (out_dir / "reproduce.md").read_text()
    assert "| regime | init | method | K | n | graded (test) | test accuracy |" in md
    assert md.count("\n| 12 | ") == len(res["summary"]) == 10
    assert "V=103" in md and "## Failed runs" in md and "injected failure" in md
    # the claims compare SKD with the init and every baseline on each metric, graded first
    assert md.index("**graded**") < md.index("**test accuracy**") < md.index("**draft acceptance**")
    assert "- 12 / weak / K = 1: init " in md and ", sft " in md
    assert (run_dir / "reproduce" / "12" / "weak" / "seed0" / "skd-k1" / "result.json").exists()
    if res["plots"]["accuracy"] is not None:      # matplotlib installed
        assert (out_dir / "accuracy.png").stat().st_size > 0 and (out_dir / "correction_rate.png").exists()

    # resume: every finished run is skipped, the failed ones are retried (the failure is gone now)
    monkeypatch.setattr(rep.Study, "distil", real)
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    assert "14 of 16 runs already have a result" in r.output
    res2 = json.loads((out_dir / "reproduce.json").read_text())
    assert all(x["status"] == "ok" for x in res2["runs"])
    assert sorted((x["method"], x["seed"]) for x in res2["runs"] if not x["cached"]) == [("supervised", 1)] * 2
    same = {(x["init"], x["variant"], x["seed"]): x["test_accuracy"] for x in runs if x["status"] == "ok"}
    assert all(same[(x["init"], x["variant"], x["seed"])] == x["test_accuracy"] for x in res2["runs"] if x["cached"])


def test_teacher_stage_is_the_demos(tmp_path, teacher_dir):
    """Without --teacher the study calls the demo's teacher stage in the run dir, with the preset's full
    recipe (the demo's own teacher is shortened to its time budget) in a folder of its own."""
    import dataclasses

    from skd.core.studies import reproduce as rep
    from skd.core.studies.demo import DemoConfig
    from skd.core.presets import PRESET_SFT_RECIPES

    seen = []

    def stage(demo_cfg, emit):
        seen.append(demo_cfg)
        return teacher_dir, None

    cfg = rep.ReproConfig(run_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "out"), methods=("skd",),
                          regimes=("8",), inits=("weak",), ks=("V",), seeds=(0,), weak_steps=1, distill_steps=1,
                          batch_size=2, eval_examples=2, spec_prompts=1, max_new_tokens=4, dtype="float32")
    res = rep.run(cfg, teacher_stage=stage)
    full = dataclasses.replace(DemoConfig(run_dir=cfg.run_dir, task=cfg.task), teacher_steps=PRESET_SFT_RECIPES["tiny-teacher"]["max_steps"],
                               teacher_folder="teacher-full")
    assert seen == [full] and full.teacher_steps == 700 and DemoConfig().teacher_steps < 700
    assert res["teacher"]["source"] == "demo teacher stage" and len(res["runs"]) == 1
    assert res["runs"][0]["status"] == "ok", res["runs"][0].get("error")
    quick = dataclasses.replace(cfg, quick=True)
    seen.clear()
    rep.run(quick, teacher_stage=stage)
    assert seen[0].teacher_steps == 8     # --quick uses `skd demo --quick`'s teacher recipe


def test_bad_values_are_one_line_errors(tmp_path):
    for args in (["--ks", "1,x"], ["--regimes", "lots"], ["--methods", "gkd"], ["--seeds", "a"], ["--init-seed", "-1"]):
        r = CliRunner().invoke(main, ["bench", "reproduce", "--run-dir", str(tmp_path), *args])
        assert r.exit_code != 0 and "error" in r.output.lower(), (args, r.output)


def test_init_regime_trains_every_init_on_its_prompt_set(tmp_path, teacher_dir, monkeypatch):
    """--init-regime: the cell distils on its own prompts, but its init was SFT'd on the named set."""
    from skd.core import train as train_lib

    seen = []
    real_train = train_lib.train

    def spy(run, *a, examples=None, **k):
        seen.append((run.train.method, len(examples[0])))
        return real_train(run, *a, examples=examples, **k)

    monkeypatch.setattr(train_lib, "train", spy)
    run_dir = tmp_path / "runs"
    args = ["--run-dir", str(run_dir), "--output-dir", str(tmp_path / "out"), "--teacher", str(teacher_dir),
            "--regimes", "6", "--init-regime", "14", "--inits", "mid", "--mid-steps", "1", "--methods", "sft",
            "--seeds", "0", "--distill-steps", "1", "--batch-size", "2", "--eval-examples", "2",
            "--spec-prompts", "1", "--max-new-tokens", "4", "--dtype", "float32"]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    cell = run_dir / "reproduce" / "6" / "mid" / "seed0"
    init_cfg = json.loads((cell / "init" / "run_config.json").read_text())
    sft_cfg = json.loads((cell / "sft" / "run_config.json").read_text())
    assert (init_cfg["data"]["limit"], init_cfg["train"]["max_steps"]) == (14, 1)
    assert sft_cfg["data"]["limit"] == 6
    assert seen == [("sft", 14), ("sft", 6)]   # the examples each stage really trained on


def test_report_only_reads_finished_stages_and_trains_nothing(tmp_path, teacher_dir, monkeypatch):
    from skd.core.studies import reproduce as rep

    base = ["--run-dir", str(tmp_path / "runs"), "--teacher", str(teacher_dir), "--regimes", "6", "--inits", "weak",
            "--weak-steps", "1", "--seeds", "0", "--distill-steps", "1", "--batch-size", "2", "--eval-examples", "2",
            "--spec-prompts", "1", "--max-new-tokens", "4", "--dtype", "float32"]
    assert _invoke([*base, "--output-dir", str(tmp_path / "a"), "--methods", "sft"]).exit_code == 0

    def no_training(*a, **k):
        raise AssertionError("--report-only trained something")

    monkeypatch.setattr(rep.Study, "distil", no_training)
    r = _invoke([*base, "--output-dir", str(tmp_path / "b"), "--methods", "sft,supervised", "--seeds", "0,1",
                 "--report-only"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "b" / "reproduce.json").read_text())
    status = {(x["seed"], x["variant"]): x["status"] for x in res["runs"]}
    assert status == {(0, "sft"): "ok", (0, "supervised"): "not run", (1, "sft"): "not run",
                      (1, "supervised"): "not run"}
    assert [i["status"] for i in res["inits"]] == ["ok", "not run"]
    assert all(row["n_failed"] == 0 for row in res["summary"])
    md = (tmp_path / "b" / "reproduce.md").read_text()
    assert "Not run yet (--report-only): 3 of 4 runs" in md and "## Failed runs" not in md


def test_init_seed_starts_every_seed_from_one_init(tmp_path, teacher_dir):
    """--init-seed 0: seeds 0 and 1 distil from the same init (trained once); only the distillation's
    seed differs, and the runs of the second seed live in their own folder beside the first's."""
    from skd.core.errors import SkdError
    from skd.core.studies import reproduce as rep

    run_dir, out_dir = tmp_path / "runs", tmp_path / "out"
    args = ["--run-dir", str(run_dir), "--output-dir", str(out_dir), "--teacher", str(teacher_dir),
            "--regimes", "6", "--inits", "weak", "--weak-steps", "1", "--methods", "supervised,skd", "--ks", "1",
            "--seeds", "0,1", "--init-seed", "0", "--distill-steps", "2", "--batch-size", "2", "--eval-examples", "2",
            "--spec-prompts", "1", "--max-new-tokens", "4", "--dtype", "float32"]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    res = json.loads((out_dir / "reproduce.json").read_text())
    assert [(i["seed"], i["status"]) for i in res["inits"]] == [(0, "ok")]
    assert res["summary"][0]["variant"] == "init" and res["summary"][0]["n_ok"] == 1
    cell = run_dir / "reproduce" / "6" / "weak"
    assert (cell / "seed0" / "init" / "final").is_dir() and not (cell / "seed1").exists()
    for seed, folder in ((0, "seed0"), (1, "seed1-init0")):
        cfg = json.loads((cell / folder / "supervised" / "run_config.json").read_text())
        assert cfg["train"]["seed"] == seed
    assert {(x["seed"], x["init_seed"]) for x in res["runs"]} == {(0, 0), (1, 0)}
    assert all(x["status"] == "ok" for x in res["runs"])
    md = (out_dir / "reproduce.md").read_text()
    assert "seeds 0, 1 (every seed from the init of seed 0)" in md
    # a rerun finds every run cached; without --init-seed seed 0's runs are the same runs (cached), seed
    # 1's are other runs (from its own init)
    assert "4 of 4 runs already have a result" in _invoke(args).output
    i = args.index("--init-seed")
    assert "2 of 4 runs already have a result" in _invoke(args[:i] + args[i + 2:]).output
    assert (cell / "seed1" / "init" / "final").is_dir() and (cell / "seed1-init0" / "supervised").is_dir()
    with pytest.raises(SkdError, match="init seed"):
        rep.check_config(rep.ReproConfig(init_seed=-2))


def test_claims_pair_the_seeds():
    """The paired difference is SKD minus the baseline seed by seed, over the seeds both finished; the
    claims line reports its mean ± std and the seeds SKD is ahead in, beside the unpaired test."""
    from skd.core.studies.reproduce import ReproConfig
    from skd.core.studies.reproduce_report import aggregate, paired_differences, render_markdown

    def run(seed, variant, graded, status="ok"):
        method, _, k = variant.partition("-k")
        return {"regime": "100", "init": "weak", "seed": seed, "variant": variant, "method": method,
                "k_label": k or None, "k": int(k) if k else None, "status": status, "test_graded": graded,
                "test_accuracy": graded / 2, "draft": {"acceptance_rate": 0.5, "teacher_forwards_per_token": 0.5}}

    skd = [0.101, 0.091, 0.098, 0.076, 0.074]
    onp = [0.082, 0.065, 0.067, 0.047, 0.042]
    runs = [run(s, "skd-k3", v) for s, v in enumerate(skd)] + [run(s, "on-policy", v) for s, v in enumerate(onp)]
    runs.append(run(5, "skd-k3", 0.2))                       # no on-policy run of seed 5: not paired
    runs.append(run(6, "on-policy", 0.3, status="error"))   # a failed run: not paired
    d = paired_differences(runs, "100", "weak", "skd-k3", "on-policy", "test_graded")
    assert d == pytest.approx([a - b for a, b in zip(skd, onp)])
    assert paired_differences(runs, "100", "weak", "on-policy", "skd-k3", "draft_acceptance") == [0.0] * 5
    cfg = ReproConfig(task="manyway-short", methods=("on-policy", "skd"), regimes=("100",), inits=("weak",),
                      ks=("3",), seeds=(0, 1, 2, 3, 4, 5, 6))
    result = {"config": __import__("dataclasses").asdict(cfg), "runs": runs, "inits": [],
              "env": {k: "x" for k in ("device_name", "device", "torch", "transformers", "skd", "ops_backend", "time")},
              "teacher": {"path": "t", "source": "s", "eval": {"test_accuracy": 0.5, "test_examples": 5}},
              "vocab_size": 103}
    result["summary"] = aggregate(runs, cfg, [])
    md = render_markdown(result)
    unpaired = statistics.fmean(skd + [0.2]) - statistics.fmean(onp)
    assert f"- 100 / weak / K = 3: on-policy {unpaired:+.3f} (" in md
    assert f"; paired {statistics.fmean(d):+.3f} ± {statistics.stdev(d):.3f}, ahead in 5 of 5)" in md

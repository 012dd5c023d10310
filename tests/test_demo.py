"""`skd demo --quick` end to end: every stage cached by its stamp, the graded metric in the lead."""
import json

import pytest
from click.testing import CliRunner

from skd.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _demo(run_dir, *extra):
    return CliRunner(env={"COLUMNS": "250"}).invoke(main, ["demo", "--quick", "--run-dir", str(run_dir), *extra],
                                                   catch_exceptions=False)


def test_demo_quick_leads_with_graded_and_reuses_every_stage(tmp_path):
    first = _demo(tmp_path)
    assert first.exit_code == 0, first.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["lead_metric"] == "graded"                 # manyway tasks have a graded score
    assert set(res["methods"]) == {"supervised", "on-policy", "skd"}
    for r in res["methods"].values():
        assert 0.0 <= r["test"]["graded"] <= 1.0 and 0.0 <= r["test"]["valid"] <= 1.0
        assert r["curve"][0][0] == 0 and len(r["curve"]) >= 2
    # only SKD replaces tokens; the reading names what it did and where the correction rate went
    assert res["methods"]["skd"]["correction_rate_start"] is not None
    assert res["methods"]["supervised"]["correction_rate_start"] in (None, 0.0)
    assert len(res["reading"]) == 2 and "top-" in res["reading"][0] and "Correction rate" in res["reading"][1]
    assert "graded (test)" in first.output and res["reading"][1][:40] in first.output.replace("\n", " ")
    assert {"teacher", "student_init", "evaluate", "supervised", "on-policy", "skd"} <= set(res["timings_s"])
    assert (tmp_path / "curves.png").is_file()

    again = _demo(tmp_path)                               # nothing retrains, nothing is re-measured
    assert again.exit_code == 0, again.output
    res2 = json.loads((tmp_path / "results.json").read_text())
    assert set(res2["timings_s"]) == {"total"}
    assert res2["methods"] == res["methods"] and res2["teacher"] == res["teacher"]
    assert again.output.count("cached") >= 6

    # a changed method setting redoes that method only
    third = _demo(tmp_path, "--distill-steps", "3")
    res3 = json.loads((tmp_path / "results.json").read_text())
    assert set(res3["timings_s"]) == {"supervised", "on-policy", "skd", "total"}, third.output


def _results(skd, supervised, on_policy, corr=(0.2, 0.1)):
    method = lambda g, c=(None, None): {"test": {"graded": g, "accuracy": 0.0},  # noqa: E731
                                        "correction_rate_start": c[0], "correction_rate_end": c[1]}
    return {"lead_metric": "graded", "config": {"k": 3, "eval_examples": 200},
            "teacher": {"graded": 0.6, "accuracy": 0.4}, "init": {"graded": 0.3, "accuracy": 0.1},
            "methods": {"supervised": method(supervised), "on-policy": method(on_policy), "skd": method(skd, corr)}}


def test_reading_says_plainly_whether_skd_is_ahead():
    from skd.core.studies.demo import reading

    ahead = reading(_results(0.42, 0.35, 0.38))
    assert "SKD ahead of every other method by 0.040" in ahead[0] and "top-3" in ahead[0]
    assert "SKD minus supervised +0.070, minus on-policy +0.040" in ahead[0]
    assert "0.20 at the start -> 0.10 at the end: the teacher had to repair less" in ahead[1]
    behind = reading(_results(0.33, 0.35, 0.38, corr=(0.1, 0.12)))
    assert "SKD is not ahead of every other method (-0.050 against the best)" in behind[0]
    assert "it did not fall in this run" in behind[1]

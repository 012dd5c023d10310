"""`skd bench peers --quick` end to end: tiny presets, every section, the JSON record, the greedy checks.

With trl installed the TRL row is measured; without it (CI installs .[test], which has no trl) the row
is skipped with one line saying how to install it."""
import json
import math

import pytest
from click.testing import CliRunner

from skd.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _invoke(*args):
    return CliRunner().invoke(main, ["bench", "peers", "--quick", *args], catch_exceptions=False)


def test_quick_run_measures_every_section(tmp_path):
    from skd.benchmarks.peer_steps import trl_trainer
    from skd.benchmarks.peers import all_ratios

    out = tmp_path / "peers.json"
    r = _invoke("--run-dir", str(tmp_path / "run"), "--batch1-prompts", "2", "--draft-int8", "--output", str(out))
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["bench"] == "peers" and set(res["sections"]) == {"distill", "draft", "sampler"}
    for key in ("device_name", "threads", "cpu_count", "torch", "transformers", "trl"):
        assert key in res["env"]
    assert "machine:" in r.output and "transformers" in r.output

    distill = res["sections"]["distill"]
    kind, skip = trl_trainer()
    rows = distill["results"]
    if kind is None:
        assert "trl_on_policy" not in rows and distill["skipped"] == skip
        assert sum(line.strip() == skip for line in r.output.splitlines()) >= 1
    else:
        assert "trl_on_policy" in rows and distill["skipped"] is None and distill["trl_trainer"] == kind
        assert distill["trl_settings"]["beta"] == 0.0 and distill["trl_settings"]["temperature"] == 1.0
    for name, row in rows.items():
        assert row["measures"] and row["steps_timed"] == 2 and row["batch_size"] == 2
        assert row["step_s"] > 0 and row["tokens_per_s"] > 0
    for name in ("skd_skd_gamma_auto", "skd_skd_gamma_5"):
        assert 0 <= rows[name]["acceptance_rate"] <= 1
    assert rows["skd_skd_gamma_5"]["mean_draft_length"] <= 5
    for name in ("skd_on_policy", "skd_skd_gamma_auto", "skd_skd_gamma_5"):   # hooks saw the forwards
        assert 0 < rows[name]["sampling_forward_share"] <= 1 and 0 < rows[name]["model_time_share"] <= 1
    for name in ("skd_skd_gamma_auto", "skd_skd_gamma_auto_student_led"):
        assert rows[name]["mean_draft_length"] is None or 1 <= rows[name]["mean_draft_length"] <= 8
    assert rows["skd_skd_gamma_auto"]["teacher_led"] and not rows["skd_skd_gamma_auto_student_led"]["teacher_led"]
    assert rows["skd_skd_gamma_auto_student_led"]["teacher_led_share"] == 0.0
    assert rows["skd_skd_gamma_5"]["teacher_led_share"] == 0.0
    for name in ("skd_skd_gamma_auto", "skd_skd_gamma_auto_student_led", "skd_skd_gamma_5",
                 "skd_skd_gamma_auto_priced"):   # kept/tested >= kept/drafted
        assert rows[name]["acceptance_rate"] <= rows[name]["per_token_acceptance"] <= 1
    floor = distill["floor"]
    assert len(floor["forward_ms"]["student"]) == 8 and len(floor["forward_ms"]["teacher"]) == 8
    assert set(floor["rows"]) == {"skd_skd_gamma_auto", "skd_skd_gamma_auto_student_led", "skd_skd_gamma_5",
                                  "skd_skd_gamma_auto_priced"}
    assert len(floor["teacher_prices"]) == 8 and rows["skd_skd_gamma_auto_priced"]["gamma"] == "auto"
    assert floor["rows"]["skd_skd_gamma_5"]["best_plan"] == "g5"
    assert floor["rows"]["skd_skd_gamma_auto_student_led"]["best_plan"][0] == "g"
    for f in floor["rows"].values():
        assert f["floor_step_s"] > 0 and math.isfinite(f["measured_over_floor"])
        assert ("floor_over_trl" in f) == (kind is not None)
    assert "floor of skd_skd_gamma_auto: per-token acceptance" in r.output

    draft = res["sections"]["draft"]
    names = set(draft["results"])
    assert {"teacher_hf_b1", "teacher_hf_b2", "teacher_skd_b1", "teacher_skd_b2"} <= names
    for d in ("student", "skd-distilled", "student+int8", "skd-distilled+int8"):   # --draft-int8: int8 copies too
        assert {f"hf_assisted_b1/{d}", f"skd_spec_b1/{d}", f"skd_spec_b2/{d}"} <= names
    for name, row in draft["results"].items():   # greedy everywhere: every output is the teacher's own
        assert row["outputs_match_teacher"] is True, name
    assert (tmp_path / "run" / "draft-greedy" / "final" / "config.json").is_file()
    responses = draft["distilled_draft"]["responses"]   # the recipe's data: the teacher's greedy responses
    assert draft["distilled_draft"]["recipe"] == "teacher-greedy" and responses["prompts"] == 4
    assert 0 < responses["tokens"] <= 4 * 8
    for d in ("student", "skd-distilled"):
        info = draft["drafts"][d]
        assert 0 <= info["teacher_forced_match"] <= 1 and 0 < info["break_even_acceptance"] <= 1
    assert "of the teacher's greedy tokens from the teacher's prefix" in r.output
    for d in ("student", "skd-distilled"):   # assisted generation (B = 1) against both skd sizes
        assert {f"skd_spec_b1/{d}_over_hf_assisted_b1/{d}", f"skd_spec_b2/{d}_over_hf_assisted_b1/{d}"} <= set(
            draft["ratios"])

    sampler = res["sections"]["sampler"]["results"]
    assert set(sampler) == {"skd_batched", "released_loop", "skd_batch1", "student_only", "skd_batched_auto"}
    assert sampler["released_loop"]["prompts"] == sampler["skd_batch1"]["prompts"] == 2
    assert sampler["skd_batched"]["prompts"] == 3
    for name, row in sampler.items():   # generate()'s forwards are counted too
        assert 0 < row["forward_share"] <= 1, name
    ratios = all_ratios(res)
    assert ratios and all(math.isfinite(v) and v > 0 for v in ratios.values()), ratios
    assert (tmp_path / "peers.png").stat().st_size > 1000


def test_trl_row_is_skipped_with_one_line_without_trl(tmp_path, monkeypatch):
    from skd.benchmarks import peer_steps

    monkeypatch.setattr(peer_steps, "trl_version", lambda: None)
    out = tmp_path / "peers.json"
    r = _invoke("--sections", "distill", "--repeats", "1", "--run-dir", str(tmp_path / "run"), "--output", str(out))
    assert r.exit_code == 0, r.output
    line = "TRL rows skipped: trl is not installed (pip install 'skd[peers]')"
    assert line in r.output.splitlines()
    res = json.loads(out.read_text())
    assert "trl_on_policy" not in res["sections"]["distill"]["results"] and res["sections"]["distill"]["ratios"] == {}


@pytest.mark.parametrize("args, words", [(("--sections", "distill,nope"), "unknown or no sections"),
                                         (("--draft-gamma", "x"), "--draft-gamma must be auto")])
def test_bad_options_are_one_line(tmp_path, args, words):
    r = CliRunner().invoke(main, ["bench", "peers", "--quick", "--run-dir", str(tmp_path / "run"), *args])
    assert r.exit_code == 2
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output


def test_draft_option_replaces_the_distilled_draft(tmp_path):
    """--draft names the trained draft: no distillation run, its rows under 'given', outputs still the
    teacher's own; a draft with another tokenizer is refused in one line."""
    from skd.core.presets import materialize_preset

    out = tmp_path / "peers.json"
    r = _invoke("--sections", "draft", "--repeats", "1", "--run-dir", str(tmp_path / "run"),
                "--draft", str(materialize_preset("tiny-teacher")), "--output", str(out))
    assert r.exit_code == 0, r.output
    sec = json.loads(out.read_text())["sections"]["draft"]
    assert not (tmp_path / "run" / "draft-greedy").exists() and "distilled_draft" not in sec
    assert {"hf_assisted_b1/given", "skd_spec_b1/given", "skd_spec_b2/given"} <= set(sec["results"])
    assert all(row["outputs_match_teacher"] for row in sec["results"].values())
    assert sec["drafts"]["given"]["teacher_forced_match"] == 1.0   # the teacher drafting for itself
    assert "given draft (--draft):" in r.output


def test_a_draft_with_another_tokenizer_is_one_line(tmp_path):
    from skd.core.presets import materialize_preset, tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    for name in ("tiny-teacher", "tiny-student"):   # written before the call: their progress bars are not its output
        materialize_preset(name)
    other = build_char_tokenizer()
    other.add_tokens(["<extra>"])
    tiny_model("llama", len(other), seed=3, hidden=16, layers=1).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    r = CliRunner().invoke(main, ["bench", "peers", "--quick", "--sections", "draft", "--run-dir",
                                  str(tmp_path / "run"), "--draft", str(tmp_path / "other")])
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "different tokenizer" in lines[0] and "teacher's family" in lines[0]

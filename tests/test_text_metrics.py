"""Tests for core/text_metrics.py: the evaluate-module metrics against rouge_score / sacrebleu called
directly, input errors, and COMET skipped with a note when unavailable."""
from __future__ import annotations

import pytest

from skd.core import text_metrics
from skd.core.errors import SkdError

# ---- text metrics through evaluate -------------------------------------------------------------

PREDS = ["#Person1# asks #Person2# to type a memo about instant messaging.",
         "The cat sat on the mat."]
REFS = ["Ms. Dawson helps #Person1# write a memo banning instant messaging.",
        "A cat was sitting on the mat."]


def test_rouge_matches_rouge_score_mean_fmeasure():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    expected = {key: sum(scorer.score(r, p)[key].fmeasure for p, r in zip(PREDS, REFS)) / 2
                for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    result = text_metrics.rouge(PREDS, REFS)
    assert result.keys() == expected.keys()
    for key, value in result.items():
        assert type(value) is float and value == pytest.approx(expected[key])
    assert text_metrics.rouge(["same words"], ["same words"])["rougeL"] == pytest.approx(1.0)


def test_rouge_with_several_references_takes_the_best():
    single = text_metrics.rouge(PREDS[:1], REFS[:1])["rougeL"]
    multi = text_metrics.rouge(PREDS[:1], [["unrelated text entirely", REFS[0]]])["rougeL"]
    assert multi == pytest.approx(single)


def test_bleu_and_chrf_match_sacrebleu():
    import sacrebleu

    assert text_metrics.bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert text_metrics.chrf(PREDS, REFS) == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    assert text_metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert type(text_metrics.bleu(PREDS, REFS)) is float
    multi = text_metrics.bleu(PREDS, [[REFS[0], "another one"], [REFS[1]]])  # ragged reference lists
    assert multi >= text_metrics.bleu(PREDS, REFS) - 1e-9


def test_metric_input_errors_are_user_errors():
    with pytest.raises(SkdError, match="no predictions"):
        text_metrics.rouge([], [])
    with pytest.raises(SkdError, match="2 predictions but 1 references"):
        text_metrics.bleu(PREDS, REFS[:1])
    with pytest.raises(SkdError, match="no metric module"):
        text_metrics.load_metric("rouge")


def test_comet_is_skipped_with_a_note_when_unavailable(monkeypatch):
    real_find_spec = text_metrics.importlib.util.find_spec
    monkeypatch.setattr(text_metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "comet" else real_find_spec(name, *a))
    result = text_metrics.comet(["src"], ["hyp"], ["ref"])
    assert result.score is None and "unbabel-comet" in result.note


def test_metric_modules_keep_one_import_per_line():
    for module in text_metrics.METRIC_MODULES_DIR.glob("*/*.py"):
        for line in module.read_text().splitlines():
            if line.startswith("import "):
                assert "," not in line, f"{module.name}: {line}"

"""ROUGE for skd, in `evaluate`'s local-module form (loaded with `evaluate.load(<this folder>)`).

Wraps Google's `rouge_score` package directly, so it works offline, where `evaluate.load("rouge")`
cannot fetch its hub script. Output: {rouge1, rouge2, rougeL, rougeLsum}, each the MEAN F-measure
over examples, in [0, 1]. (The hub "rouge" metric reports the median of a bootstrap resample of that
mean, which is random; the plain mean is what it estimates.) Several references per prediction:
the best-scoring one counts, as in `rouge_score`'s `score_multi`. rougeLsum splits summaries into
sentences on newlines only, as the hub metric does.

Keep one import per line: evaluate's dependency scanner misreads `import a, b`.
"""
import evaluate
from skd.core.text_metrics import acl_citation, text_metric_module
from rouge_score import rouge_scorer

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings, one per example.
    references: list of strings, or list of lists of strings (several references per example).
    rouge_types: which scores to return (default rouge1, rouge2, rougeL, rougeLsum).
    use_stemmer: apply the Porter stemmer before matching (default False, as the hub metric).
Returns:
    dict mapping each rouge type to a Python float in [0, 1].
"""

DEFAULT_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@text_metric_module(
    description="ROUGE-1/2/L/Lsum F-measure (mean over examples) through the rouge_score package.",
    citation=acl_citation("lin-2004-rouge", "{ROUGE}: A Package for Automatic Evaluation of Summaries",
                          "Lin, Chin-Yew", "Text Summarization Branches Out", 2004),
    inputs=_KWARGS_DESCRIPTION, url="https://github.com/google-research/google-research/tree/master/rouge")
class SkdRouge(evaluate.Metric):
    def _compute(self, predictions, references, rouge_types=DEFAULT_TYPES, use_stemmer=False):
        rouge_types = list(rouge_types)
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer)
        totals = {name: 0.0 for name in rouge_types}
        for prediction, reference in zip(predictions, references):
            if isinstance(reference, str):
                scores = scorer.score(reference, prediction)
            else:
                scores = scorer.score_multi(list(reference), prediction)
            for name in rouge_types:
                totals[name] += scores[name].fmeasure
        count = max(len(predictions), 1)
        return {name: float(total / count) for name, total in totals.items()}

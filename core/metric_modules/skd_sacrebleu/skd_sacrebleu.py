"""BLEU and chrF for skd, in `evaluate`'s local-module form (`evaluate.load(<this folder>)`).

Wraps `sacrebleu` so it works offline, where `evaluate.load("sacrebleu")` cannot fetch its hub
script. Output (both on sacrebleu's 0-100 scale): {"bleu", "bleu_precisions", "brevity_penalty",
"sys_len", "ref_len", "chrf"}. BLEU uses the 13a tokeniser by default; chrF uses character n-grams
up to 6 and beta 2 (word_order=2 gives chrF++). Several references per prediction are allowed and
may vary in number.

Note: the paper's released MT evaluation printed the hub metric "bleu" (another implementation, on a
0-1 scale); sacrebleu is the reproducible standard for reporting BLEU, so skd reports it instead.
Keep one import per line: evaluate's dependency scanner misreads `import a, b`.
"""
import evaluate
from skd.core.text_metrics import acl_citation, text_metric_module
from sacrebleu.metrics import BLEU
from sacrebleu.metrics import CHRF

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings, one per example.
    references: list of strings, or list of lists of strings (several references per example).
    tokenize: sacrebleu tokenizer for BLEU (default "13a").
    lowercase: BLEU on lowercased text (default False).
    chrf_word_order: 0 for chrF (default), 2 for chrF++.
Returns:
    dict of Python numbers: bleu, bleu_precisions, brevity_penalty, sys_len, ref_len, chrf.
"""


def reference_streams(references):
    """Per-example references -> sacrebleu's list of reference streams (None pads short rows)."""
    rows = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    width = max((len(row) for row in rows), default=1)
    return [[row[i] if i < len(row) else None for row in rows] for i in range(width)]


@text_metric_module(
    description="Corpus-level BLEU and chrF (0-100) computed by sacrebleu.",
    citation="\n".join([
        acl_citation("post-2018-call", "A Call for Clarity in Reporting {BLEU} Scores", "Post, Matt",
                     "Proceedings of the Third Conference on Machine Translation: Research Papers", 2018),
        acl_citation("popovic-2015-chrf", "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
                     r"Popovi{\'c}, Maja", "Proceedings of the Tenth Workshop on Statistical Machine Translation",
                     2015),
    ]),
    inputs=_KWARGS_DESCRIPTION, url="https://github.com/mjpost/sacrebleu")
class SkdSacrebleu(evaluate.Metric):
    def _compute(self, predictions, references, tokenize="13a", lowercase=False, chrf_word_order=0):
        predictions = list(predictions)
        streams = reference_streams(references)
        bleu = BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(predictions, streams)
        chrf = CHRF(word_order=chrf_word_order).corpus_score(predictions, streams)
        return {
            "bleu": float(bleu.score),
            "bleu_precisions": [float(p) for p in bleu.precisions],
            "brevity_penalty": float(bleu.bp),
            "sys_len": int(bleu.sys_len),
            "ref_len": int(bleu.ref_len),
            "chrf": float(chrf.score),
        }

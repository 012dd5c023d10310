"""Text metrics: ROUGE / BLEU / chrF through `evaluate`, and COMET (the summarisation and translation tasks).

Public: rouge(preds, refs), bleu(preds, refs), chrf(preds, refs), comet(srcs, preds, refs) -> CometResult,
CometResult, load_metric(name), METRIC_MODULES_DIR, COMET_MODEL; for the metric modules themselves:
text_metric_module(...) (their class decorator), text_metric_info(...) (their MetricInfo), acl_citation(...).

ROUGE/BLEU/chrF run through `evaluate`, from metric modules shipped in core/metric_modules/ (its hub
scripts cannot be fetched offline), so the numbers are the same online and offline. Scales: ROUGE in
[0, 1]; BLEU, chrF (sacrebleu) and COMET x100 on 0-100. Every number returned is a Python float.
`evaluate` (~5 s to import) and COMET are imported lazily.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from skd.core.errors import SkdError

METRIC_MODULES_DIR = Path(__file__).resolve().parent / "metric_modules"
COMET_MODEL = "Unbabel/wmt22-comet-da"  # CONTRACT.md §6, translation

_INSTALL_EVAL = "install the metric dependencies: pip install 'skd[eval]'"


@functools.lru_cache(maxsize=None)
def text_metric_info(*, description: str, citation: str, inputs: str, url: str):
    """The `evaluate.MetricInfo` of skd's text metric modules: string predictions, each against one
    reference string or a list of them (every module in metric_modules/ takes both forms)."""
    import datasets
    import evaluate

    one, many = (datasets.Features({"predictions": datasets.Value("string"), "references": ref})
                 for ref in (datasets.Value("string"), datasets.Sequence(datasets.Value("string"))))
    return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs,
                               features=[many, one], reference_urls=[url])


def text_metric_module(*, description: str, citation: str, inputs: str, url: str):
    """Class decorator of the `evaluate.Metric` classes in metric_modules/: gives the class the
    docstring `evaluate` documents it by (description + inputs, through add_start_docstrings) and an
    `_info` returning text_metric_info of these texts, so a module states its texts and `_compute` only."""
    def decorate(cls):
        from evaluate.utils.file_utils import add_start_docstrings

        def _info(self):
            return text_metric_info(description=description, citation=citation, inputs=inputs, url=url)

        cls._info = _info
        return add_start_docstrings(description, inputs)(cls)
    return decorate


def acl_citation(key: str, title: str, author: str, booktitle: str, year: int) -> str:
    """The BibTeX entry of a paper in the ACL Anthology (what the metric modules cite), in the
    Anthology's layout; `title` and `author` are BibTeX text (braces and accents kept as given)."""
    return (f'@inproceedings{{{key},\n  title = "{title}",\n  author = "{author}",\n'
            f'  booktitle = "{booktitle}",\n  year = "{year}",\n'
            '  publisher = "Association for Computational Linguistics",\n}')


def load_metric(name: str):
    """The `evaluate` module core/metric_modules/<name>/ (skd_rouge, skd_sacrebleu), loaded by path
    (works offline), kept in memory (no cache files), cached per process."""
    folder = METRIC_MODULES_DIR / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in METRIC_MODULES_DIR.iterdir() if p.is_dir())
        raise SkdError(f"no metric module '{name}' in {METRIC_MODULES_DIR}",
                       f"use one of: {', '.join(known)}")
    try:
        import evaluate
    except ImportError as err:
        raise SkdError(f"cannot import the 'evaluate' library ({err})", _INSTALL_EVAL) from err
    try:
        return evaluate.load(str(folder), keep_in_memory=True)
    except ImportError as err:  # rouge_score / sacrebleu missing: evaluate names the package
        raise SkdError(f"metric '{name}' is missing a dependency ({err})", _INSTALL_EVAL) from err


def _check_pairs(predictions: Sequence[str], references: Sequence[Any], what: str) -> None:
    if len(predictions) == 0:
        raise SkdError(f"{what}: no predictions to score", "pass at least one prediction")
    if len(predictions) != len(references):
        raise SkdError(f"{what}: {len(predictions)} predictions but {len(references)} references",
                       "pass one reference (or one list of references) per prediction")


def _as_references(references: Sequence[Any]) -> list[Any]:
    return [ref if isinstance(ref, str) else [str(r) for r in ref] for ref in references]


def rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
          use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum mean F-measure in [0, 1] (CONTRACT.md §6: DialogSum is scored by
    ROUGE-L). A reference may be a list of strings: the best one counts."""
    _check_pairs(predictions, references, "rouge")
    result = load_metric("skd_rouge").compute(
        predictions=[str(p) for p in predictions], references=_as_references(references),
        use_stemmer=use_stemmer)
    return {key: float(value) for key, value in result.items()}


def _sacrebleu(predictions: Sequence[str], references: Sequence[Any], what: str) -> dict:
    _check_pairs(predictions, references, what)
    return load_metric("skd_sacrebleu").compute(
        predictions=[str(p) for p in predictions], references=_as_references(references))


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU on 0-100 (sacrebleu, 13a tokenisation); printed beside COMET in the paper."""
    return float(_sacrebleu(predictions, references, "bleu")["bleu"])


def chrf(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF on 0-100 (sacrebleu)."""
    return float(_sacrebleu(predictions, references, "chrf")["chrf"])


class CometResult(NamedTuple):
    """score: system-level COMET x100 (0-100), or None when it could not be computed;
    note: why it is None (missing package, model not downloadable, ...)."""
    score: float | None
    note: str | None


def comet(sources: Sequence[str], predictions: Sequence[str], references: Sequence[str], *,
          model: str = COMET_MODEL, batch_size: int = 8, gpus: int | None = None) -> CometResult:
    """COMET (Unbabel/wmt22-comet-da, the paper's translation metric) when `unbabel-comet` is
    installed and its model can be fetched or is cached; otherwise CometResult(None, note).
    Never raises for an unavailable COMET. `gpus` defaults to 1 when CUDA is available."""
    _check_pairs(predictions, references, "comet")
    if len(sources) != len(predictions):
        raise SkdError(f"comet: {len(sources)} sources but {len(predictions)} predictions",
                       "pass one source sentence per prediction")
    if importlib.util.find_spec("comet") is None:
        return CometResult(None, "COMET skipped: the 'unbabel-comet' package is not installed "
                                 "(pip install unbabel-comet; it pins its own transformers)")
    try:
        from comet import download_model, load_from_checkpoint

        checkpoint = load_from_checkpoint(download_model(model))
        if gpus is None:
            import torch
            gpus = 1 if torch.cuda.is_available() else 0
        data = [{"src": s, "mt": p, "ref": r} for s, p, r in zip(sources, predictions, references)]
        output = checkpoint.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False)
    except Exception as err:  # offline, gated model, version clash: report, never crash the eval
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return CometResult(None, f"COMET skipped: model '{model}' unavailable "
                                 f"({type(err).__name__}: {first_line[:160]})")
    return CometResult(float(output.system_score) * 100.0, None)

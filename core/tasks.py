"""Task registry: the paper's prompt formats, stop strings, answer extraction, scoring, and examples.

Public: Example, Task (load, user_prompt, render_prompt, truncate, extract, final_answer, correct,
score, score_reference, resolve_grader), TASKS, get_task(name), list_tasks(), render_chat(text,
tokenizer), MATH_INSTRUCTION, DEFAULT_SEED.

Tasks follow CONTRACT.md §6 (prompts, stop strings and metrics of the paper and its released
evaluation scripts): gsm8k, dialogsum, flores-as-en, ultrainteract-math, the held-out math sets
gsm-plus / svamp / asdiv / math, and the built-in synthetic arith / arith-easy / arith-hard
(core/arith.py). Examples come from the HF hub or a local .json / .jsonl / .csv file
(skd.core.task_data); field overrides map the roles "prompt", "answer" (training target / reference
text) and "reference" (a field holding the final answer alone) to field names.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from skd.core import arith
from skd.core import graded
from skd.core import harness_gsm8k
from skd.core import manyway
from skd.core import metrics, text_metrics
from skd.core.errors import SkdError
from skd.core.task_data import HubSource, check_roles, field_text, hub_rows, parse_fields, read_records

DEFAULT_SEED = 20  # CONTRACT.md §5: the paper's seed; also picks the `limit` subset

# The instruction that opens every UltraInteract Math_CoT prompt. The held-out math sets are asked
# the same way, since the student learned this format (CONTRACT.md §6, math instruction).
MATH_INSTRUCTION = ("Solve the following math problem step-by-step.\nSimplify your answer as much "
                    "as possible. Present your final answer as \\boxed{Your Answer}.\n")
# Stop strings of the released code: training-time sampling and greedy evaluation differ.
_MATH_TRAIN_STOPS = ("\n###\nProblem: ", "\nSolve the following math problem step-by-step.",
                     "\nuser", "\n\n\n\n", "Solve the following math problem step-by-step.")
_MATH_EVAL_STOPS = ("\nSolve the following math problem step-by-step.", "\n\n\n\n")


@dataclass(frozen=True)
class Example:
    """One task example. prompt_text: the raw task input (question, dialogue, source sentence),
    before the task's prompt template; response: the training target (ground-truth solution,
    summary, translation); reference: what the metric compares against (the final answer for math
    tasks, else the response); meta: provenance (task, source, split, row index, row id)."""

    prompt_text: str
    response: str
    reference: str
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Task:
    """A task of the paper (or the synthetic stand-in). Formats:
    answer_format - how outputs are read: "gsm8k" (number after ####), "boxed" (last \\boxed{}),
    "text" (the output itself); reference_format - how the reference is derived from the answer
    field: "gsm8k", "boxed", "number", "asdiv" (drop "(unit)"), "text"; metric - the headline key
    of score(). grader - how accuracy compares an answer with the reference by default
    (skd.core.metrics.GRADERS): "exact" (the same value) or "paper" (the paper's lenient grader:
    relative 1e-4, ref/100 and ref*100 count). harness - the lm-evaluation-harness task whose
    scores score() reports beside accuracy ("gsm8k": strict_match and flexible_extract)."""

    name: str
    description: str
    prompt_template: str  # "{prompt}" marks where prompt_text goes
    fields: Mapping[str, str]  # role -> field name (or "a+b") in hub rows and default local files
    splits: tuple[str, ...]
    answer_format: str
    reference_format: str
    metric: str
    stop_strings: tuple[str, ...]  # during training-time sampling
    eval_stop_strings: tuple[str, ...]  # during greedy evaluation
    max_new_tokens: int
    hub: HubSource | None = None
    arith_preset: str | None = None  # built-in generator instead of the hub
    manyway_preset: str | None = None  # built-in many-valid-solutions generator (core/manyway.py)
    require_reference: bool = True  # False: rows whose answer has no final answer keep ""
    grader: str = "paper"
    harness: str | None = None
    notes: str = ""

    # ---- data -----------------------------------------------------------------------------

    def load(self, split: str = "test", *, data_path: str | Path | None = None,
             fields: Mapping[str, str] | str | None = None, limit: int | None = None,
             seed: int = DEFAULT_SEED) -> list[Example]:
        """Examples of `split` from the hub (or the built-in generator), or from the local file
        `data_path` (.json list or {"data"/"instances": [...]}, .jsonl, .csv; the file is the split
        and `split` is only recorded). `fields` overrides the role -> field mapping (a dict or
        "prompt=question,answer=answer"). `limit` keeps the first `limit` examples after a shuffle
        by random.Random(seed) (seed 20 as the paper), so a subset is the same on every run and
        nested in larger ones; without `limit` the source order is kept."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise SkdError(f"limit must be a positive integer, got {limit!r}",
                           "pass --limit N with N >= 1, or no limit for the whole split")
        mapping = dict(self.fields)
        mapping.update(parse_fields(fields) if isinstance(fields, str) else check_roles(fields))
        if data_path is not None:
            source = str(data_path)
            rows = read_records(data_path)
        elif self.arith_preset is not None:
            self._check_split(split)
            source = f"arith:{self.arith_preset}:{split}"
            rows = arith.make_split(arith.get_preset(self.arith_preset), split)
        elif self.manyway_preset is not None:
            self._check_split(split)
            source = f"manyway:{self.manyway_preset}:{split}"
            rows = manyway.make_split(manyway.get_preset(self.manyway_preset), split)
        else:
            self._check_split(split)
            assert self.hub is not None, f"task {self.name} has neither a hub source nor a generator"
            source, rows = hub_rows(self.hub, split, task_name=self.name, fields_hint=self._fields_hint())
        if not rows:
            raise SkdError(f"{source} holds no examples",
                           "check the file (or the --field / split choice) and try again")
        order = list(range(len(rows)))
        if limit is not None:
            random.Random(seed).shuffle(order)
            order = order[:limit]
        return [self._example(rows[i], i, mapping, source, split) for i in order]

    def fingerprint(self) -> str:
        """What defines this task's built-in data and scoring, for cache stamps: a cached model
        trained before the generator or the template changed must not be reused silently."""
        spec = arith.get_preset(self.arith_preset).to_dict() if self.arith_preset is not None else None
        stamp = {"name": self.name, "arith": spec, "arith_format": arith.FORMAT_VERSION,
                 "template": self.prompt_template, "max_new_tokens": self.max_new_tokens}
        if self.manyway_preset is not None:   # only then: the arith tasks' stamps stay as they were
            stamp.update(manyway=manyway.get_preset(self.manyway_preset).to_dict(),
                         manyway_format=manyway.FORMAT_VERSION)
        return json.dumps(stamp, sort_keys=True)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise SkdError(f"task '{self.name}' has no split '{split}'",
                           f"use one of: {', '.join(self.splits)}")

    def _fields_hint(self) -> str:
        return "fields: " + ", ".join(f"{role}={name}" for role, name in self.fields.items()) + \
            "; rename with --field role=name"

    def _example(self, row: Mapping[str, Any], index: int, mapping: Mapping[str, str],
                 source: str, split: str) -> Example:
        where = f"{source} row {index + 1}"
        prompt = field_text(row, mapping["prompt"], "prompt", where)
        answer = field_text(row, mapping["answer"], "answer", where)
        if "reference" in mapping:
            raw = field_text(row, mapping["reference"], "reference", where)
            reference = raw
            if self.reference_format != "text":  # a final answer: canonical if it is a number
                reference = metrics.normalize_number(raw) or raw.strip() or None
        else:
            reference = self._derive_reference(answer)
        if reference is None:
            if self.require_reference:
                raise SkdError(
                    f"{where}: cannot find the final answer in the "
                    f"'{mapping.get('reference', mapping['answer'])}' field "
                    f"({_FORMAT_WORDS[self.reference_format]})",
                    "fix that row, or point --field reference=<field> at a field holding the "
                    "final answer")
            reference = ""
        meta = {"task": self.name, "source": source, "split": split, "index": index}
        for key in ("id", "ID", "fname"):
            if key in row:
                meta["id"] = row[key]
                break
        return Example(prompt_text=prompt, response=answer, reference=reference, meta=meta)

    def _derive_reference(self, answer: str) -> str | None:
        kind = self.reference_format
        if kind == "gsm8k":
            return metrics.extract_gsm8k_answer(answer)
        if kind == "boxed":
            return metrics.extract_boxed(answer)
        if kind == "number":
            return metrics.normalize_number(answer) or (answer.strip() or None)
        if kind == "asdiv":  # "9 (apples)" -> "9"
            bare = re.sub(r"\s*\([^()]*\)", "", answer).strip()
            return metrics.normalize_number(bare) or (bare or None)
        return answer

    # ---- prompts ---------------------------------------------------------------------------

    def user_prompt(self, example: Example) -> str:
        """The paper's prompt string for this example (the content of the single user turn)."""
        return self.prompt_template.replace("{prompt}", example.prompt_text)

    def render_prompt(self, example: Example, tokenizer: Any = None) -> str:
        """user_prompt(example) through the tokenizer's chat template (one user turn,
        add_generation_prompt=True) when it has one, else the plain prompt (CONTRACT.md §6)."""
        return render_chat(self.user_prompt(example), tokenizer)

    # ---- outputs ---------------------------------------------------------------------------

    def truncate(self, output: str) -> str:
        """`output` cut before the first evaluation stop string. Generation stops there already
        (the eval loop passes eval_stop_strings); this is for outputs produced without them.
        extract/correct/score do not truncate: GSM8K references themselves contain blank lines."""
        cut = len(output)
        for stop in self.eval_stop_strings:
            at = output.find(stop)
            if at >= 0:
                cut = min(cut, at)
        return output[:cut]

    def extract(self, output: str) -> str | None:
        """The answer read from a model output: the normalised number after the last "####",
        the last \\boxed{} content, or the stripped text for text tasks."""
        if self.answer_format == "gsm8k":
            return metrics.extract_gsm8k_answer(output)
        if self.answer_format == "boxed":
            return metrics.extract_boxed(output)
        return output.strip()

    def final_answer(self, reference: str) -> str:
        """The final answer a reference stands for (accuracy tasks; text tasks: the reference).

        A full solution gives the answer load() derives from it -- the number after the last "####",
        the last \\boxed{} -- and a final answer stays as it is. A solution without a final answer
        (several lines, or a marker with nothing readable after it) raises SkdError: it would
        otherwise score 0 without a word.
        """
        if self.answer_format == "text":
            return reference
        text = str(reference).strip()
        if "####" in text:
            answer = metrics.extract_gsm8k_answer(text)
        elif "\\boxed" in text or "\\fbox" in text or "\n" in text:
            answer = metrics.extract_boxed(text)
        else:
            return text
        if answer is None:
            raise SkdError(f"reference {text[:60]!r}{'...' if len(text) > 60 else ''} holds no final answer "
                           f"({_FORMAT_WORDS[self.reference_format]})",
                           "pass the final answers (as load() gives them), or solutions ending in "
                           "'#### <number>' or holding \\boxed{...}")
        return answer

    def resolve_grader(self, grader: str | None = None) -> str:
        """The grader accuracy uses: `grader` (one of skd.core.metrics.GRADERS), or the task's own."""
        if grader is None:
            return self.grader
        if grader not in metrics.GRADERS:
            raise SkdError(f"unknown grader {grader!r}",
                           f"use one of: {', '.join(metrics.GRADERS)} (exact: the same value; paper: the "
                           "paper's lenient grader)")
        return grader

    def correct(self, output: str, reference: str, grader: str | None = None) -> bool | None:
        """Whether one output is right (accuracy tasks), None for text tasks. `reference` is a final
        answer or a full solution (see final_answer). `grader`: "exact" or "paper" (default: the
        task's; see resolve_grader). The manyway tasks count any valid solution instead."""
        if self.answer_format == "text":
            return None
        grader = self.resolve_grader(grader)
        if self.manyway_preset is not None:   # any valid solution of the problem counts
            return bool(manyway.check_solution(reference, output)["is_valid"])
        reference = self.final_answer(reference)
        predicted = self.extract(output)
        if predicted is None or not reference:
            return False
        return metrics.answers_equal(predicted, reference, grader)

    def score_reference(self, example: Example) -> str:
        """What score() should be given for `example`: the full solution when this example's final
        answer was read from it (harness scores compare against the answer text, as the harness's
        target is the whole answer field), else the reference."""
        if (self.harness is not None and self.answer_format != "text"
                and self._derive_reference(example.response) == example.reference):
            return example.response
        return example.reference

    def score(self, outputs: Sequence[str], references: Sequence[str | Sequence[str]], *,
              sources: Sequence[str] | None = None, grader: str | None = None) -> dict[str, Any]:
        """Corpus scores of `outputs` against `references` (Python floats): accuracy tasks
        {"accuracy", "answered", "n"}, references being final answers or full solutions, accuracy
        under `grader` (default: the task's); gsm8k adds lm-evaluation-harness's "strict_match" and
        "flexible_extract" (skd.core.harness_gsm8k; give full solutions, see score_reference);
        dialogsum {"rouge1", "rouge2", "rougeL", "rougeLsum", "n"}; translation {"bleu", "chrf", "n"}
        plus "comet" when `sources` are given and COMET is available. Anything skipped is explained
        in a "notes" list."""
        if len(outputs) != len(references):
            raise SkdError(f"{len(outputs)} outputs but {len(references)} references",
                           "pass one reference per output")
        if not outputs:
            raise SkdError("no outputs to score", "pass at least one output")
        n = len(outputs)
        grader = self.resolve_grader(grader)
        if self.manyway_preset is not None:   # references are the problems (the question text)
            s = manyway.score(list(outputs), list(references))
            answered = sum(self.extract(o) is not None for o in outputs)
            # partial credit as on arith: worked steps right for their own inputs, validity aside
            return {"valid": s["valid"], "graded": s["graded"], "accuracy": s["answer_correct"],
                    "partial_credit": graded.arith_graded(list(outputs))["partial_credit"],
                    "answered": answered / n, "n": n}
        if self.answer_format != "text":
            verdicts = [self.correct(o, r, grader) for o, r in zip(outputs, references)]
            answered = sum(self.extract(o) is not None for o in outputs)
            result = {"accuracy": sum(map(bool, verdicts)) / n, "answered": answered / n, "n": n}
            if self.harness == "gsm8k":
                result.update(harness_gsm8k.harness_scores(list(outputs), [str(r) for r in references]))
            if self.arith_preset is not None and arith.get_preset(self.arith_preset).reasoning:
                # partial credit: the share of worked steps right for their own inputs (core/graded.py)
                result["partial_credit"] = graded.arith_graded(list(outputs))["partial_credit"]
            return result
        texts = [self.extract(o) for o in outputs]
        if self.metric.startswith("rouge"):
            return {**text_metrics.rouge(texts, references), "n": n}
        result: dict[str, Any] = {"bleu": text_metrics.bleu(texts, references),
                                  "chrf": text_metrics.chrf(texts, references), "n": n}
        if sources is None:
            result["notes"] = ["COMET skipped: pass the source sentences to score it"]
        else:
            comet = text_metrics.comet(sources, texts, [r if isinstance(r, str) else r[0]
                                                   for r in references])
            if comet.score is None:
                result["notes"] = [comet.note]
            else:
                result["comet"] = comet.score
        return result


_FORMAT_WORDS = {"gsm8k": "expected a last line '#### <number>'",
                 "boxed": "expected a \\boxed{...} answer", "number": "expected a number",
                 "asdiv": "expected a number", "text": "expected text"}


# ---- helpers ---------------------------------------------------------------------------------

def render_chat(text: str, tokenizer: Any = None) -> str:
    """`text` as a single user turn through the tokenizer's chat template, ready for generation
    (add_generation_prompt=True); the plain text when there is no tokenizer or no template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return text
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    if not isinstance(rendered, str):
        raise SkdError("the tokenizer's apply_chat_template(tokenize=False) did not return text",
                       "use a Hugging Face tokenizer, or one without a chat template")
    return rendered


# ---- the registry ----------------------------------------------------------------------------

_GSM_TEMPLATE = "Q: {prompt} \n\nA:"  # CONTRACT.md §6 / released eval_gsm.py
_MATH_TEMPLATE = MATH_INSTRUCTION + "{prompt}"
_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                  "number_theory", "prealgebra", "precalculus")


def _synthetic_task(name: str, description: str, **fields: Any) -> Task:
    """A built-in generated task: GSM8K's prompt, "####" answers and blank-line stop, exact numbers."""
    return Task(name=name, description=description, prompt_template=_GSM_TEMPLATE, answer_format="gsm8k",
                stop_strings=("\n\n",), eval_stop_strings=("\n\n",), grader="exact", **fields)


def _arith_task(preset: str) -> Task:
    return _synthetic_task(
        "arith" if preset == "default" else f"arith-{preset}",
        f"synthetic multi-step arithmetic word problems in GSM8K format (core/arith.py, preset '{preset}'); "
        "GSM8K's prompt, stop and metric",
        fields={"prompt": "question", "answer": "answer"}, splits=arith.SPLITS, reference_format="gsm8k",
        metric="accuracy", max_new_tokens=176, arith_preset=preset,
        notes="accuracy is exact numeric match of the number after '####'")


def _manyway_task(preset: str) -> Task:
    return _synthetic_task(
        "manyway" if preset == "default" else f"manyway-{preset}",
        f"synthetic word problems with many valid worked solutions (core/manyway.py, preset '{preset}'); "
        "GSM8K's prompt and stop, scored by validity",
        fields={"prompt": "question", "answer": "answer", "reference": "question"}, splits=manyway.SPLITS,
        reference_format="text", metric="valid", manyway_preset=preset,
        max_new_tokens=manyway.get_preset(preset).max_chars - 32,  # every valid answer + EOS fits
        notes="valid: share of outputs that are a valid solution in any order (manyway.check_solution); "
              "graded: mean share of valid lines; accuracy: exact number after '####'")


def _math_heldout(name: str, description: str, hub: HubSource, fields: dict[str, str],
                  reference_format: str, notes: str) -> Task:
    return Task(
        name=name, description=description, prompt_template=_MATH_TEMPLATE, fields=fields,
        splits=tuple(hub.splits), answer_format="boxed", reference_format=reference_format,
        metric="accuracy", stop_strings=_MATH_TRAIN_STOPS, eval_stop_strings=_MATH_EVAL_STOPS,
        max_new_tokens=1024, hub=hub, notes=notes)


_TASK_LIST = [
    Task(
        name="gsm8k", description="GSM8K grade-school math (CONTRACT.md §6, arithmetic)",
        prompt_template=_GSM_TEMPLATE, fields={"prompt": "question", "answer": "answer"},
        splits=("train", "test"), answer_format="gsm8k", reference_format="gsm8k",
        metric="accuracy", stop_strings=("\n\n",), eval_stop_strings=("\n\n",),
        max_new_tokens=512,  # released eval_gsm.py
        hub=HubSource("openai/gsm8k", ("main",), {"train": "train", "test": "test"}),
        # Exact by default: the paper's lenient grader counts "#### 4200" and "#### 0.42" right for 42
        # (percentage forms) and 41.996 (relative 1e-4), which GSM8K's integer answers never need.
        grader="exact", harness="gsm8k",
        notes="accuracy: the number after the last '####', compared exactly (--grader paper: the paper's "
              "lenient grader); strict_match / flexible_extract: lm-evaluation-harness's gsm8k rules"),
    Task(
        name="dialogsum", description="DialogSum dialogue summarisation (CONTRACT.md §6)",
        # The released eval_summ.py sends the bare dialogue as the user turn, no instruction.
        prompt_template="{prompt}", fields={"prompt": "dialogue", "answer": "summary"},
        splits=("train", "validation", "test"), answer_format="text", reference_format="text",
        metric="rougeL", stop_strings=("\nuser",), eval_stop_strings=("\nuser", "\n"),
        max_new_tokens=128,  # released eval_summ.py
        hub=HubSource("knkarthick/dialogsum", (),
                      {"train": "train", "validation": "validation", "test": "test"}),
        notes="the hub test split has 1,500 rows (500 dialogues x 3 reference summaries); the "
              "original release's test file has summary1..3 per row: pass --field answer=summary1"),
    Task(
        name="flores-as-en",
        description="FLORES-200 Assamese -> English translation (CONTRACT.md §6)",
        prompt_template="Translate Assamese sentence into English. This is the Assamese "
                        "sentence: {prompt} Here is the English translation:",
        fields={"prompt": "sentence_asm_Beng", "answer": "sentence_eng_Latn"},
        splits=("train", "test"), answer_format="text", reference_format="text", metric="comet",
        stop_strings=("\n",), eval_stop_strings=("\n",), max_new_tokens=256,
        # FLORES+ (the maintained FLORES-200, parquet): facebook/flores needs a loading script,
        # which current `datasets` no longer runs. Its "dev" split (997) trains, "devtest" (1012)
        # tests; the two language configs are joined on "id".
        hub=HubSource("openlanguagedata/flores_plus", (), {"train": "dev", "test": "devtest"},
                      pair=("asm_Beng", "eng_Latn", "text", "id"), gated=True),
        notes="COMET (Unbabel/wmt22-comet-da) needs unbabel-comet; BLEU and chrF always"),
    Task(
        name="ultrainteract-math",
        description="UltraInteract math chain-of-thought SFT data (task-agnostic math, "
                    "CONTRACT.md §6)",
        prompt_template="{prompt}",  # the instruction field already holds MATH_INSTRUCTION
        fields={"prompt": "instruction", "answer": "response"}, splits=("train",),
        answer_format="boxed", reference_format="boxed", metric="accuracy",
        stop_strings=_MATH_TRAIN_STOPS, eval_stop_strings=_MATH_EVAL_STOPS, max_new_tokens=1024,
        hub=HubSource("openbmb/UltraInteract_sft", (), {"train": "train"},
                      keep=lambda row: row.get("task") == "Math_CoT",
                      keep_doc='rows with task == "Math_CoT"'),
        require_reference=False,
        notes='hub rows filtered to task == "Math_CoT"; responses without \\boxed{} get reference ""'),
    _math_heldout(
        "gsm-plus", "GSM-Plus, perturbed GSM8K test questions (held-out math)",
        HubSource("qintongli/GSM-Plus", (), {"test": "test", "testmini": "testmini"},
                  keep=lambda row: str(row.get("answer", "")).strip().lower() != "none",
                  keep_doc='drops the critical-thinking rows whose answer is "None"'),
        {"prompt": "question", "answer": "solution", "reference": "answer"}, "number",
        notes='hub rows with answer "None" (critical thinking: no answer exists) are dropped'),
    _math_heldout(
        "svamp", "SVAMP math word problems (held-out math)",
        HubSource("ChilleD/SVAMP", (), {"train": "train", "test": "test"}),
        {"prompt": "Body+Question", "answer": "Answer"}, "number",
        notes="the problem is Body + ' ' + Question; the reference is the Answer number"),
    _math_heldout(
        "asdiv", "ASDiv math word problems (held-out math)",
        HubSource("EleutherAI/asdiv", ("asdiv",), {"test": "validation"}),
        {"prompt": "body+question", "answer": "answer"}, "asdiv",
        notes="EleutherAI's copy (its only split, 'validation', serves as test); answers like "
              "'9 (apples)' are compared as 9"),
    _math_heldout(
        "math", "Hendrycks MATH competition problems (held-out math)",
        HubSource("EleutherAI/hendrycks_math", _MATH_SUBJECTS, {"train": "train", "test": "test"}),
        {"prompt": "problem", "answer": "solution"}, "boxed",
        notes="the seven subject configs concatenated in alphabetical order; the reference is the "
              "last \\boxed{} of the solution"),
    _arith_task("default"),
    _arith_task("easy"),
    _arith_task("hard"),
    _manyway_task("default"),
    _manyway_task("easy"),
    _manyway_task("hard"),
    _manyway_task("wide"),
    _manyway_task("short"),
]

TASKS: dict[str, Task] = {task.name: task for task in _TASK_LIST}


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registry order."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The registered task `name`."""
    if name not in TASKS:
        raise SkdError(f"unknown task '{name}'", f"use one of: {', '.join(TASKS)}")
    return TASKS[name]

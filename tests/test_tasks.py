"""Tests for core/tasks.py: the registry, the paper's prompt strings, chat-template rendering,
local-file loading (json / jsonl / csv, field overrides, errors), seeded limits, hub loading
through a stand-in `datasets` module, per-task extraction and scoring, and the real shared data
when it is present."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from skd.core import tasks
from skd.core.errors import SkdError
from skd.core.task_data import parse_fields
from skd.core.tasks import Example, get_task, list_tasks, render_chat

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GSM_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                 "clips in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
               "<<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                 "babysitting. How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned "
               "0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "James writes a 3-page letter to 2 different friends twice a week. How many "
                 "pages does he write a year?",
     "answer": "He writes each friend 3*2=<<3*2=6>>6 pages a week\nSo he writes "
               "6*2=<<6*2=12>>12 pages every week\nThat means he writes 12*52=<<12*52=624>>624 "
               "pages a year\n#### 624"},
]
DIALOG_ROW = {"fname": "dev_1",
              "dialogue": "#Person1#: Hi, Mr. Smith. I'm Doctor Hawkins.\n#Person2#: I found it "
                          "would be a good idea to get a check-up.",
              "summary": "Mr. Smith's getting a check-up, and Doctor Hawkins advises him.",
              "topic": "get a check-up"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows) -> Path:
    return _write(path, "".join(json.dumps(row) + "\n" for row in rows))


# ---- registry and prompts -----------------------------------------------------------------------

def test_registry_names_and_unknown_task():
    names = list_tasks()
    for name in ("arith", "arith-easy", "arith-hard", "gsm8k", "dialogsum", "flores-as-en",
                 "ultrainteract-math", "gsm-plus", "svamp", "asdiv", "math"):
        assert name in names and tasks.TASKS[name].name == name
    with pytest.raises(SkdError, match="unknown task 'gsm9k'.*gsm8k"):
        get_task("gsm9k")


def test_hub_ids_of_the_paper_datasets():
    assert get_task("gsm8k").hub.path == "openai/gsm8k" and get_task("gsm8k").hub.configs == ("main",)
    assert get_task("dialogsum").hub.path == "knkarthick/dialogsum"
    assert get_task("svamp").hub.path == "ChilleD/SVAMP"
    assert get_task("ultrainteract-math").hub.path == "openbmb/UltraInteract_sft"
    assert get_task("gsm-plus").hub.path == "qintongli/GSM-Plus"
    assert get_task("arith").hub is None


def test_paper_prompt_strings():
    example = Example("What is 2+3?", "2+3=5\n#### 5", "5")
    assert get_task("gsm8k").user_prompt(example) == "Q: What is 2+3? \n\nA:"
    assert get_task("arith").user_prompt(example) == "Q: What is 2+3? \n\nA:"
    source = Example("মই ভাত খাওঁ।", "I eat rice.", "I eat rice.")
    assert get_task("flores-as-en").user_prompt(source) == (
        "Translate Assamese sentence into English. This is the Assamese sentence: মই ভাত খাওঁ। "
        "Here is the English translation:")
    dialog = Example(DIALOG_ROW["dialogue"], DIALOG_ROW["summary"], DIALOG_ROW["summary"])
    assert get_task("dialogsum").user_prompt(dialog) == DIALOG_ROW["dialogue"]
    math_prompt = get_task("svamp").user_prompt(Example("Tom has {3} apples.", "3", "3"))
    assert math_prompt == ("Solve the following math problem step-by-step.\nSimplify your answer "
                           "as much as possible. Present your final answer as \\boxed{Your "
                           "Answer}.\nTom has {3} apples.")


def test_stop_strings_of_the_paper():
    assert get_task("gsm8k").eval_stop_strings == ("\n\n",)
    assert get_task("dialogsum").stop_strings == ("\nuser",)
    assert get_task("dialogsum").eval_stop_strings == ("\nuser", "\n")
    assert get_task("flores-as-en").eval_stop_strings == ("\n",)
    assert get_task("dialogsum").truncate("A summary.\nuser: more") == "A summary."


class _StubTokenizer:
    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        assert [m["role"] for m in messages] == ["user"]
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_render_prompt_through_a_stub_chat_template_and_without_one():
    task = get_task("gsm8k")
    example = Example("What is 2+3?", "#### 5", "5")
    assert task.render_prompt(example, _StubTokenizer()) == \
        "<user>Q: What is 2+3? \n\nA:</user><assistant>"
    no_template = types.SimpleNamespace(chat_template=None)
    assert task.render_prompt(example, no_template) == "Q: What is 2+3? \n\nA:"
    assert task.render_prompt(example) == "Q: What is 2+3? \n\nA:"


def test_render_prompt_with_a_real_tokenizer_chat_template():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                        eos_token="<eos>")
    task = get_task("dialogsum")
    example = Example("#Person1#: Hello.", "They greet.", "They greet.")
    assert task.render_prompt(example, tokenizer) == "#Person1#: Hello."  # no template yet
    tokenizer.chat_template = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                               "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    assert task.render_prompt(example, tokenizer) == \
        "<start_of_turn>user\n#Person1#: Hello.<end_of_turn>\n<start_of_turn>model\n"
    assert render_chat("hi", tokenizer).endswith("<start_of_turn>model\n")


# ---- field overrides ----------------------------------------------------------------------------

def test_parse_fields():
    assert parse_fields("prompt=question,answer=answer") == {"prompt": "question", "answer": "answer"}
    assert parse_fields(" prompt = Body+Question ") == {"prompt": "Body+Question"}
    assert parse_fields("") == {} and parse_fields(None) == {}
    with pytest.raises(SkdError, match="role=field"):
        parse_fields("prompt")
    with pytest.raises(SkdError, match="unknown field role"):
        parse_fields("question=prompt")
    with pytest.raises(SkdError, match="twice"):
        parse_fields("prompt=a,prompt=b")


# ---- local files --------------------------------------------------------------------------------

def test_load_jsonl_json_and_csv_give_the_same_examples(tmp_path):
    task = get_task("gsm8k")
    renamed = [{"q": r["question"], "sol": r["answer"]} for r in GSM_ROWS]
    jsonl = _jsonl(tmp_path / "a.jsonl", renamed)
    json_list = _write(tmp_path / "b.json", json.dumps(renamed))
    json_data = _write(tmp_path / "c.json", json.dumps({"data": renamed}))
    json_instances = _write(tmp_path / "d.json", json.dumps({"instances": renamed}))
    import csv
    with (tmp_path / "e.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["q", "sol"])
        writer.writeheader()
        writer.writerows(renamed)
    loaded = [task.load(data_path=path, fields="prompt=q,answer=sol")
              for path in (jsonl, json_list, json_data, json_instances, tmp_path / "e.csv")]
    assert all([e.prompt_text for e in batch] == [e.prompt_text for e in loaded[0]]
               for batch in loaded)
    assert all([e.response for e in batch] == [r["answer"] for r in GSM_ROWS] for batch in loaded)
    assert [e.reference for e in loaded[0]] == ["72", "10", "624"]
    assert loaded[0][0].meta["source"] == str(jsonl) and loaded[0][2].meta["index"] == 2
    as_dict = task.load(data_path=jsonl, fields={"prompt": "q", "answer": "sol"})
    assert as_dict == loaded[0]


def test_malformed_jsonl_line_is_named(tmp_path):
    path = _write(tmp_path / "bad.jsonl", json.dumps(GSM_ROWS[0]) + "\n\n{\"question\": oops}\n")
    with pytest.raises(SkdError, match=r"bad\.jsonl, line 3: not valid JSON"):
        get_task("gsm8k").load(data_path=path)
    arrays = _write(tmp_path / "arr.jsonl", "[1, 2]\n")
    with pytest.raises(SkdError, match="line 1: a JSON list, not an object"):
        get_task("gsm8k").load(data_path=arrays)


@pytest.mark.parametrize("name, text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"),
                                        ("empty.json", "[]"), ("nothing.json", ""),
                                        ("header.csv", "question,answer\n")])
def test_empty_files_are_user_errors(tmp_path, name, text):
    with pytest.raises(SkdError, match="holds no examples"):
        get_task("gsm8k").load(data_path=_write(tmp_path / name, text))


def test_file_errors(tmp_path):
    task = get_task("gsm8k")
    with pytest.raises(SkdError, match="not found"):
        task.load(data_path=tmp_path / "missing.jsonl")
    with pytest.raises(SkdError, match="unsupported file type '.txt'"):
        task.load(data_path=_write(tmp_path / "x.txt", "hi"))
    with pytest.raises(SkdError, match="without a 'data' or 'instances' list"):
        task.load(data_path=_write(tmp_path / "o.json", '{"rows": []}'))
    with pytest.raises(SkdError, match=r"o2\.json, line 1: not valid JSON"):
        task.load(data_path=_write(tmp_path / "o2.json", "{oops"))


def test_missing_field_names_it_the_available_ones_and_the_fix(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [{"q": "1+1?", "a": "#### 2"}])
    with pytest.raises(SkdError) as err:
        get_task("gsm8k").load(data_path=path)
    message = str(err.value)
    assert "no field 'question' for the prompt" in message
    assert "fields there: a, q" in message and "--field prompt=" in message
    assert "row 1" in message


def test_answer_without_final_number_is_named(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "no marker here"}])
    with pytest.raises(SkdError, match=r"row 1: cannot find the final answer.*'#### <number>'"):
        get_task("gsm8k").load(data_path=path)


def test_limit_is_a_deterministic_seeded_subset(tmp_path):
    rows = [{"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}
            for i in range(50)]
    path = _jsonl(tmp_path / "many.jsonl", rows)
    task = get_task("gsm8k")
    first = task.load(data_path=path, limit=10)
    assert first == task.load(data_path=path, limit=10)
    assert [e.prompt_text for e in first] != [r["question"] for r in rows[:10]]  # shuffled
    assert task.load(data_path=path, limit=20)[:10] == first  # nested in larger subsets
    assert task.load(data_path=path, limit=10, seed=21) != first
    assert len(task.load(data_path=path, limit=500)) == 50
    assert [e.meta["index"] for e in task.load(data_path=path)] == list(range(50))
    for bad in (0, -3, True, 2.5):
        with pytest.raises(SkdError, match="limit must be a positive integer"):
            task.load(data_path=path, limit=bad)


def test_unknown_split_is_a_user_error():
    with pytest.raises(SkdError, match="no split 'validation'.*train, test"):
        get_task("gsm8k").load("validation")


# ---- hub loading through a stand-in `datasets` ----------------------------------------------------

class _FakeDataset(list):
    def to_list(self):
        return list(self)


def _fake_datasets(monkeypatch, tables=None, error=None):
    calls = []

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        if error is not None:
            raise error
        return _FakeDataset(tables[(path, config, split)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_offline_hub_gives_the_local_file_fix(monkeypatch):
    _fake_datasets(monkeypatch, error=ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub"))
    with pytest.raises(SkdError) as err:
        get_task("gsm8k").load("test")
    message = str(err.value)
    assert message.startswith("cannot download dataset 'openai/gsm8k' (offline or unreachable")
    assert "pass a local file with --data path.jsonl" in message
    assert "prompt=question" in message and "answer=answer" in message


def test_hub_rows_use_config_split_and_fields(monkeypatch):
    calls = _fake_datasets(monkeypatch, {("openai/gsm8k", "main", "test"): GSM_ROWS})
    examples = get_task("gsm8k").load("test", limit=2)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert {e.reference for e in examples} <= {"72", "10", "624"} and len(examples) == 2
    assert examples[0].meta["source"] == "hub:openai/gsm8k:test"


def test_flores_pairs_two_language_configs(monkeypatch):
    asm = [{"id": 1, "text": "মই ভাত খাওঁ।"}, {"id": 2, "text": "সি পঢ়ে।"}]
    eng = [{"id": 2, "text": "He reads."}, {"id": 1, "text": "I eat rice."}]
    path = "openlanguagedata/flores_plus"
    _fake_datasets(monkeypatch, {(path, "asm_Beng", "devtest"): asm,
                                 (path, "eng_Latn", "devtest"): eng})
    examples = get_task("flores-as-en").load("test")
    assert [(e.prompt_text, e.reference) for e in examples] == [
        ("মই ভাত খাওঁ।", "I eat rice."), ("সি পঢ়ে।", "He reads.")]


def test_ultrainteract_keeps_math_cot_rows(monkeypatch):
    rows = [{"task": "Math_CoT", "instruction": "Solve ... 1+1", "response": "Step 1 \\boxed{2}"},
            {"task": "Coding", "instruction": "Write code", "response": "print(1)"},
            {"task": "Math_CoT", "instruction": "Solve ... 2+2", "response": "no box"}]
    _fake_datasets(monkeypatch, {("openbmb/UltraInteract_sft", None, "train"): rows})
    examples = get_task("ultrainteract-math").load("train")
    assert [e.reference for e in examples] == ["2", ""]  # a missing box is allowed here


def test_math_concatenates_subject_configs(monkeypatch):
    tables = {("EleutherAI/hendrycks_math", subject, "test"):
              [{"problem": f"{subject}?", "solution": f"So $x = \\boxed{{\\frac{{1}}{{{i + 2}}}}}$."}]
              for i, subject in enumerate(tasks._MATH_SUBJECTS)}
    calls = _fake_datasets(monkeypatch, tables)
    examples = get_task("math").load("test")
    assert len(calls) == 7 and len(examples) == 7
    assert examples[0].reference == "\\frac{1}{2}"


# ---- extraction, correctness and scores per task -------------------------------------------------

def test_gsm8k_correct_and_score():
    task = get_task("gsm8k")
    outputs = ["48/2=24\n48+24=72\n#### 72", "#### 9.99", "I think it is 624"]
    assert [task.correct(o, r) for o, r in zip(outputs, ["72", "10", "624"])] == [True, False, False]
    assert task.score(outputs, ["72", "10", "624"]) == \
        {"accuracy": pytest.approx(1 / 3), "answered": pytest.approx(2 / 3), "n": 3,
         "strict_match": pytest.approx(1 / 3), "flexible_extract": pytest.approx(2 / 3)}  # lm-eval-harness's


def test_boxed_math_tasks_compare_leniently(tmp_path):
    path = _jsonl(tmp_path / "math.jsonl", [
        {"problem": "What is $\\frac{2}{4}$?",
         "solution": "Cancel: $\\frac{2}{4}=\\boxed{\\frac{1}{2}}$."}])
    task = get_task("math")
    example = task.load(data_path=path)[0]
    assert example.reference == "\\frac{1}{2}"
    assert task.correct("... so the answer is \\boxed{0.5}", example.reference) is True
    assert task.correct("... \\boxed{\\dfrac{1}{2}}", example.reference) is True
    assert task.correct("the answer is 0.5", example.reference) is False


def test_svamp_and_asdiv_references(tmp_path):
    svamp = _write(tmp_path / "SVAMP.json", json.dumps([
        {"ID": "chal-1", "Body": "Each pack of dvds costs 76 dollars. If there is a discount of "
                                 "25 dollars on each pack", "Question": "How much do you have to "
                                 "pay to buy each pack?", "Equation": "( 76.0 - 25.0 )",
         "Answer": 51.0, "Type": "Subtraction"}]))
    example = get_task("svamp").load(data_path=svamp)[0]
    assert example.prompt_text.endswith("each pack How much do you have to pay to buy each pack?")
    assert example.reference == "51" and example.meta["id"] == "chal-1"
    assert get_task("svamp").correct("So \\boxed{51}", example.reference)
    asdiv = _jsonl(tmp_path / "asdiv.jsonl", [{"body": "Seven red apples and two green apples "
                                               "are in the basket.", "question": "How many "
                                               "apples are in the basket?",
                                               "answer": "9 (apples)"}])
    assert get_task("asdiv").load(data_path=asdiv)[0].reference == "9"


def test_dialogsum_scores_rouge_and_translation_scores_bleu(tmp_path):
    dialogsum = get_task("dialogsum")
    example = dialogsum.load(data_path=_jsonl(tmp_path / "d.jsonl", [DIALOG_ROW]))[0]
    assert example.reference == DIALOG_ROW["summary"] and example.meta["id"] == "dev_1"
    assert dialogsum.correct("anything", example.reference) is None
    scores = dialogsum.score([DIALOG_ROW["summary"]], [example.reference])
    assert scores["rougeL"] == pytest.approx(1.0) and scores["n"] == 1
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "n"}
    flores = get_task("flores-as-en")
    result = flores.score(["I eat rice every day."], ["I eat rice every day."])
    assert result["bleu"] == pytest.approx(100.0) and "comet" not in result
    assert "COMET skipped" in result["notes"][0]


def test_score_takes_full_reference_solutions_as_load_reads_them(tmp_path):
    rows = [{"question": "q1", "answer": "48/2=24\n48+24=72\n#### 72"},
            {"question": "q2", "answer": "It costs $1,000.\n#### $1,000"},
            {"question": "q3", "answer": "3*3=9\n#### 9"}]
    outputs = ["so #### 72", "#### 1000", "#### 8"]
    for name in ("gsm8k", "arith"):
        task = get_task(name)
        loaded = [e.reference for e in task.load(data_path=_jsonl(tmp_path / "g.jsonl", rows))]
        assert loaded == ["72", "1000", "9"]
        solutions = [r["answer"] for r in rows]
        assert task.score(outputs, solutions) == task.score(outputs, loaded)
        assert task.score(outputs, solutions)["accuracy"] == pytest.approx(2 / 3)
        assert [task.correct(o, r) for o, r in zip(outputs, solutions)] == [True, True, False]
    math = get_task("math")
    solution = "Cancel: $\\frac{2}{4}=\\boxed{\\frac{1}{2}}$."
    assert math.final_answer(solution) == "\\frac{1}{2}" == math.final_answer("\\frac{1}{2}")
    assert math.score(["\\boxed{0.5}"], [solution])["accuracy"] == 1.0


def test_score_refuses_reference_solutions_without_a_final_answer():
    task = get_task("gsm8k")
    for reference in ("She has 3 apples.\nThen 2 more, so five.", "#### about five"):
        with pytest.raises(SkdError, match="holds no final answer"):
            task.score(["#### 5"], [reference])
    assert get_task("dialogsum").final_answer("two\nlines") == "two\nlines"  # text tasks take any text


def test_score_length_mismatch():
    with pytest.raises(SkdError, match="2 outputs but 1 references"):
        get_task("gsm8k").score(["a", "b"], ["1"])


# ---- the real shared data -----------------------------------------------------------------------

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="no ../shared/data")


@needs_data
def test_real_gsm8k_test_answers_score_correct_against_themselves():
    task = get_task("gsm8k")
    examples = task.load("test", data_path=DATA / "gsm8k" / "test.jsonl")
    assert len(examples) == 1319
    for example in examples:
        assert example.reference == example.response.split("####")[-1].strip().replace(",", "")
        assert task.extract(example.response) == example.reference
    scores = task.score([e.response for e in examples], [e.reference for e in examples])
    assert scores == {"accuracy": 1.0, "answered": 1.0, "n": 1319, "strict_match": 1.0, "flexible_extract": 1.0}


@needs_data
def test_real_svamp_loads_through_the_local_file_path():
    task = get_task("svamp")
    examples = task.load(data_path=DATA / "svamp" / "SVAMP.json")
    raw = json.loads((DATA / "svamp" / "SVAMP.json").read_text())
    assert len(examples) == len(raw) == 1000
    for example, row in zip(examples, raw):
        assert example.prompt_text == row["Body"] + " " + row["Question"]
        assert float(example.reference) == pytest.approx(row["Answer"])
        assert task.correct(f"\\boxed{{{example.reference}}}", example.reference)


@needs_data
def test_real_dialogsum_references_load_through_the_local_file_path():
    task = get_task("dialogsum")
    dev = task.load("validation", data_path=DATA / "dialogsum" / "dev.jsonl")
    assert len(dev) == 500 and all(e.reference and e.prompt_text.startswith("#Person1#:")
                                   for e in dev)
    test = task.load(data_path=DATA / "dialogsum" / "test.jsonl", fields="answer=summary1",
                     limit=20)
    assert len(test) == 20 and all(e.reference for e in test)
    with pytest.raises(SkdError, match="no field 'summary'.*summary1.*--field answer="):
        task.load(data_path=DATA / "dialogsum" / "test.jsonl")

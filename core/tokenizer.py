"""Character-level tokenizer for the built-in tiny models (tests, presets, synthetic tasks).

Public: `build_char_tokenizer(save_dir=None) -> PreTrainedTokenizerFast`, `CHAT_TEMPLATE`,
`SPECIAL_TOKENS`, `CHARACTERS`. One token per character (printable ASCII, "\\n", "\\t"), so V is
about 100 and decode(encode(text)) == text for every text made of those characters (any other
character becomes <unk>). Built with the `tokenizers` library from nothing; saved/loaded in the
Hugging Face format like any hub tokenizer.

Decisions (the rest of skd relies on them):
- EOS is "<|end|>": the token that closes an assistant answer in the chat template, so generation
  stops where an answer ends, with or without the template (raw-prompt tasks append eos_token too).
  There is deliberately no separate "<eos>" token: two end markers is the trap where the model
  learns one and the sampler stops on the other.
- Nothing is added automatically around an encoding (no BOS, no EOS): prompt ids are exactly the
  characters of the prompt. "<bos>" exists for callers that want one.
- The chat template renders "<|user|>{content}<|end|><|assistant|>{answer}<|end|>"; assistant
  content sits in a `{% generation %}` block so `return_assistant_tokens_mask=True` marks the answer
  and its closing <|end|> (the position that predicts EOS is trained, CONTRACT.md §3).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds and `skd --help` must not pay it
    from transformers import PreTrainedTokenizerFast

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
EOS = END  # see module docstring: the end of an assistant answer is the end of the sequence

# Ids are positions in these lists, specials first, so the small ids (pad=0, bos=1, unk=2, ...) are
# stable and easy to read in test failures.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, UNK, USER, ASSISTANT, END)
CHARACTERS: tuple[str, ...] = ("\t", "\n") + tuple(chr(c) for c in range(32, 127))  # printable ASCII

# Multi-turn: user and assistant turns alternate freely; a trailing generation prompt opens an
# assistant turn. System messages are refused rather than silently dropped or merged.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|user|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('the char tokenizer chat template supports only user and assistant roles, got ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

MODEL_MAX_LENGTH = 1024  # matches the presets' max_position_embeddings


def build_char_tokenizer(save_dir: str | os.PathLike | None = None) -> "PreTrainedTokenizerFast":
    """Build the character tokenizer; if `save_dir` is given also `save_pretrained` it there.

    Reload with `AutoTokenizer.from_pretrained(save_dir)`: vocabulary, special tokens and chat
    template survive the round trip.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    assert len(vocab) == len(SPECIAL_TOKENS) + len(CHARACTERS), "duplicate token in the char vocabulary"
    # BPE with no merges and no pre-tokenizer splits the text into single characters and maps each
    # to its id (unknown ones to <unk>); whitespace is kept as ordinary characters.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    # Fuse joins tokens with nothing between them; the default decoder would insert spaces.
    backend.decoder = decoders.Fuse()
    # Specials are matched as whole strings before the character split, so "<|end|>" written in
    # a rendered chat template encodes to one id, not seven characters.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        clean_up_tokenization_spaces=False,  # the clean-up rewrites " ." to "." and breaks round trips
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(os.fspath(save_dir))
    return tokenizer

"""Small builders shared by several test files (importable as `helpers`: pytest puts tests/ on sys.path).

Public: addition_examples(tok, n, seed=0) -> list[TokenizedExample].
"""
import torch

from skd.core.data import TokenizedExample


def addition_examples(tok, n: int, seed: int = 0) -> list[TokenizedExample]:
    """`n` seeded "a+b=" chat prompts (a, b < 50) answered with the sum and EOS, tokenized by `tok`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in torch.randint(0, 50, (2,), generator=g))
        prompt = tok.apply_chat_template([{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True,
                                         tokenize=False)
        out.append(TokenizedExample(tok(prompt)["input_ids"], tok(str(a + b))["input_ids"] + [tok.eos_token_id]))
    return out

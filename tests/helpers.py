"""Small builders shared by several test files (importable as `helpers`: pytest puts tests/ on sys.path).

Public: addition_examples(tok, n, seed=0) -> list[TokenizedExample]; doubling_examples(tok, n) (the
prompts "i+i="); tiny_llama_models(tok) -> (teacher, student, tok); divergence_of_probs(name, p, q, beta,
alpha) (the textbook formula of each divergence, on probabilities, differentiable by autograd);
sharpened_pair(vocab, scale, teacher, student) and law_pair(vocab) -> (teacher, student) float64 Llamas with
sharpened outputs; skd_law(teacher,
student, prefixes, k, vocab) (the exact SKD token law at the next position, CONTRACT.md §2);
assert_within_dot_bound(y, x, w, b=None, row_scale=None) (a float32 product's rounding bound).
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


def doubling_examples(tok, n: int) -> list[TokenizedExample]:
    """`n` chat prompts "i+i=" (i = 0 .. n-1) answered with 2i and EOS."""
    out = []
    for i in range(n):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"{i}+{i}="}], add_generation_prompt=True,
                                         tokenize=False)
        out.append(TokenizedExample(tok(prompt)["input_ids"], tok(str(2 * i))["input_ids"] + [tok.eos_token_id]))
    return out


def tiny_llama_models(tok, vocab: int = 103):
    """(teacher 2x32, student 1x16, tok): fresh tiny Llamas over the char tokenizer's vocabulary."""
    from skd.core.presets import tiny_model

    return (tiny_model("llama", vocab, seed=1, hidden=32, layers=2),
            tiny_model("llama", vocab, seed=2, hidden=16, layers=1), tok)


def divergence_of_probs(name: str, p, q, beta: float = 0.5, alpha: float = 0.1):
    """D(p || q) per row (last dimension) from probabilities p (teacher) and q (student)."""
    def kl(a, b):  # xlogy: 0 * log 0 = 0
        return (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)

    if name == "fkl":
        return kl(p, q)
    if name == "rkl":
        return kl(q, p)
    if name in ("jsd", "jsd-normalized"):
        m = beta * p + (1 - beta) * q
        j = beta * kl(p, m) + (1 - beta) * kl(q, m)
        return j / (beta * (1 - beta)) if name == "jsd-normalized" else j
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "skew-fkl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if name == "skew-rkl":
        return kl(q, alpha * q + (1 - alpha) * p)
    raise AssertionError(name)


def chi_square(counts, probs, n):
    """Pearson's statistic of observed `counts` against the law `probs` over `n` draws, cells with an
    expected count under 5 pooled into one: (statistic, degrees of freedom)."""
    expected = probs * n
    keep = expected >= 5
    obs = torch.cat([counts[keep], counts[~keep].sum().view(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().view(1)])
    nz = exp > 0
    return float((((obs - exp) ** 2)[nz] / exp[nz]).sum()), int(nz.sum()) - 1


def sharpened_pair(vocab: int, scale: float, teacher=(21, 16, 1), student=(22, 16, 1), arch: str = "llama"):
    """(teacher, student): float64 tiny models of `arch` (llama by default) over `vocab` ids, each given as
    (seed, hidden, layers), whose output layers are scaled by `scale`, so that their distributions are
    peaked and differ clearly."""
    from skd.core.presets import tiny_model

    models = [tiny_model(arch, vocab, seed=seed, dtype=torch.float64, hidden=hidden, layers=layers)
              for seed, hidden, layers in (teacher, student)]
    with torch.no_grad():
        for m in models:
            m.get_output_embeddings().weight.mul_(scale)
    return tuple(models)


def split_test_pair(vocab: int, arch: str = "llama"):
    """The pair of the verification-pass tests (output layer put off, staged verification): output layers
    scaled by 8, so top-K tests and argmaxes are not coin flips, and a random student is rejected often
    but not always; a 2-layer x 32 teacher, a 1-layer x 16 student."""
    return sharpened_pair(vocab, 8.0, teacher=(5, 32, 2), student=(6, 16, 1), arch=arch)


def noisy_copy(teacher, noise: float = 1.0):
    """A copy of teacher with Gaussian noise (noise x the weights' std, seed 9) on its output layer: a
    greedy draft that matches the teacher often, not always."""
    import copy

    draft = copy.deepcopy(teacher)
    with torch.no_grad():
        w = draft.get_output_embeddings().weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(9), dtype=w.dtype) * w.std() * noise)
    return draft


def sampler_generators(seed: int = 0) -> dict:
    """sample()'s student_generator / teacher_generator keywords, seeded 100 + seed and 200 + seed."""
    return dict(student_generator=torch.Generator().manual_seed(100 + seed),
                teacher_generator=torch.Generator().manual_seed(200 + seed))


def law_pair(vocab: int):
    """The pair of the token-law (chi-square) tests: one-layer models, outputs scaled by 3."""
    return sharpened_pair(vocab, 3.0)


def skd_law(teacher, student, prefixes, k: int, vocab: int) -> torch.Tensor:
    """The SKD token law at the next position of each prefix (temperature 1, no truncation, bonus
    discarded): the student's token x ~ q is kept when it lies in the teacher's top-K, else a teacher
    token ~ p replaces it: r(x) = q(x) [x in top-K(p)] + (1 - q(top-K(p))) p(x). [len(prefixes), vocab]."""
    with torch.no_grad():
        p = torch.softmax(teacher(torch.tensor(prefixes)).logits[:, -1, :vocab].double(), -1)
        q = torch.softmax(student(torch.tensor(prefixes)).logits[:, -1, :vocab].double(), -1)
    top = torch.zeros_like(p, dtype=torch.bool).scatter_(1, p.topk(k, -1).indices, True)
    kept = q * top
    return kept + (1 - kept.sum(-1, keepdim=True)) * p


def assert_within_dot_bound(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b=None, row_scale=None) -> None:
    """y = x @ w^T (times row_scale[n] per output, plus b) within float32 rounding: |y - exact| <=
    gamma_n * sum_k |x_k w_k| (* row_scale), the textbook bound of a float32 dot product of length K
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), gamma_n = n u / (1 - n u),
    u = 2^-24, n = K + 1, one more for the scale's product, plus one rounding of the bias: any
    summation order meets it, a wrong index or a wrong scale never does."""
    exact = x.double() @ w.double().t()
    mag = x.double().abs() @ w.double().abs().t()
    n = x.shape[1] + 1
    if row_scale is not None:
        exact, mag, n = exact * row_scale.double(), mag * row_scale.double(), n + 1
    u = 2.0 ** -24
    bound = n * u / (1 - n * u) * mag
    if b is not None:
        exact = exact + b.double()
        bound = bound + u * (exact.abs() + b.double().abs())
    assert torch.all((y.double() - exact).abs() <= bound + 1e-30), (y.double() - exact).abs().max()


def spy_keyword(monkeypatch, module, name: str, keyword: str) -> list:
    """Wrap module.<name> for the test: each call goes through unchanged and appends its keyword
    argument `keyword` (None when not given) to the returned list."""
    seen = []
    real = getattr(module, name)

    def spy(*a, **kw):
        seen.append(kw.get(keyword))
        return real(*a, **kw)

    monkeypatch.setattr(module, name, spy)
    return seen

"""Batched SKD sampling: the identities of CONTRACT.md §2 on tiny float64 models.

- skd with K >= V reproduces mode "student" token for token (same student seed);
- skd with K = 0 reproduces mode "teacher" token for token (same teacher seed);
- greedy: a batch of 3 equals three batches of 1;
- the teacher logits kept from verification equal a fresh teacher forward on the final sequences;
- EOS and stop strings end a row, EOS stays a training target; provenance and counts add up.
"""
import copy

import pytest
import torch

from skd.core.presets import tiny_model
from skd.core.sampling import PROV_PROMPT, PROV_STUDENT, PROV_TEACHER, SampleConfig, sample

V = 40
PROMPTS = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30]]


@pytest.fixture
def pair64(sharp_pair64):
    return sharp_pair64


def _gens(s=0, t=0):
    return dict(student_generator=torch.Generator().manual_seed(100 + s),
                teacher_generator=torch.Generator().manual_seed(200 + t))


def _responses(out):
    return out.responses()


NO_EOS = -1  # an id that never occurs: rows run to max_new_tokens


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_skd_with_k_at_least_vocab_is_on_policy(pair64, gamma):
    teacher, student = pair64
    base = dict(max_new_tokens=17, gamma=gamma, student_temperature=0.9, student_top_p=0.9)
    skd = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=V, **base), eos_token_id=NO_EOS,
                 vocab_size=V, **_gens())
    pol = sample(teacher, student, PROMPTS, SampleConfig(mode="student", **base), eos_token_id=NO_EOS,
                 vocab_size=V, **_gens())
    assert _responses(skd) == _responses(pol)
    assert skd.replaced == 0 and skd.accepted == skd.proposed == skd.generated
    assert (skd.provenance[skd.response_mask] == PROV_STUDENT).all()


@pytest.mark.parametrize("k_big", [V, V + 5])
def test_skd_with_k_at_least_vocab_and_eos(pair64, k_big):
    teacher, student = pair64
    probe = sample(teacher, student, PROMPTS, SampleConfig(mode="student", max_new_tokens=12,
                   student_temperature=1.0, student_top_p=1.0), eos_token_id=NO_EOS, vocab_size=V, **_gens())
    eos = probe.responses()[0][4]  # a token row 0 produces: it will end row 0 (and maybe others)
    base = dict(max_new_tokens=12, gamma=3, student_temperature=1.0, student_top_p=1.0)
    skd = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=k_big, **base), eos_token_id=eos,
                 vocab_size=V, **_gens())
    pol = sample(teacher, student, PROMPTS, SampleConfig(mode="student", **base), eos_token_id=eos,
                 vocab_size=V, **_gens())
    assert _responses(skd) == _responses(pol)
    assert skd.responses()[0][-1] == eos and len(skd.responses()[0]) <= 5


@pytest.mark.parametrize("semantics", ["paper", "code"])
def test_skd_with_k_zero_is_teacher_sampling(pair64, semantics):
    teacher, student = pair64
    base = dict(max_new_tokens=15, gamma=4, teacher_temperature=0.8, teacher_top_p=0.95, semantics=semantics)
    skd = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=0, **base), eos_token_id=NO_EOS,
                 vocab_size=V, **_gens(s=5))
    tea = sample(teacher, student, PROMPTS, SampleConfig(mode="teacher", **base), eos_token_id=NO_EOS,
                 vocab_size=V, **_gens(s=9))
    assert _responses(skd) == _responses(tea)
    assert skd.accepted == 0 and skd.replaced == skd.generated
    assert (skd.provenance[skd.response_mask] == PROV_TEACHER).all()
    torch.testing.assert_close(skd.teacher_logits, tea.teacher_logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode,k,keep_bonus", [("skd", 3, False), ("skd", 3, True), ("skd", 8, False),
                                               ("student", 0, False), ("teacher", 0, False)])
def test_greedy_batch_of_three_equals_three_batches_of_one(pair64, mode, k, keep_bonus):
    teacher, student = pair64
    cfg = SampleConfig(mode=mode, k=k, gamma=3, keep_bonus=keep_bonus, max_new_tokens=14,
                       student_temperature=0, teacher_temperature=0)
    batched = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    singles = [sample(teacher, student, [p], cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens()).responses()[0]
               for p in PROMPTS]
    assert batched.responses() == singles


def _fresh_teacher_logits(teacher, out):
    with torch.no_grad():
        logits = teacher(input_ids=out.tokens, attention_mask=out.attention_mask).logits[..., :V]
    rows = []
    for b in range(out.tokens.shape[0]):
        p, n = int(out.prompt_lengths[b]), int(out.lengths[b])
        rows.append(logits[b, p - 1: n - 1])
    return rows


@pytest.mark.parametrize("cfg", [
    dict(mode="skd", k=5, gamma=5),
    dict(mode="skd", k=2, gamma=3, keep_bonus=True),
    dict(mode="skd", k=1, gamma=6, max_new_tokens=90),   # many rejections: exercises cache compaction
    dict(mode="skd", k=12, gamma=4, semantics="code"),
    dict(mode="teacher"),
])
def test_reused_teacher_logits_equal_a_fresh_teacher_forward(cfg, pair64):
    teacher, student = (copy.deepcopy(m).float() for m in pair64)  # fp32, held to atol 1e-5 below
    full = dict(max_new_tokens=24, student_temperature=1.0, student_top_p=1.0, teacher_temperature=1.0,
                teacher_top_p=1.0)
    full.update(cfg)
    out = sample(teacher, student, PROMPTS, SampleConfig(**full), eos_token_id=NO_EOS, vocab_size=V, **_gens())
    fresh = _fresh_teacher_logits(teacher, out)
    for b, ref in enumerate(fresh):
        n = ref.shape[0]
        torch.testing.assert_close(out.teacher_logits[b, :n], ref, rtol=0, atol=1e-5)


def test_provenance_and_counts_add_up(pair64):
    teacher, student = pair64
    cfg = SampleConfig(mode="skd", k=4, gamma=4, max_new_tokens=30, student_temperature=1.0, student_top_p=1.0)
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    prov = out.provenance
    for b, p in enumerate(PROMPTS):
        assert (prov[b, : len(p)] == PROV_PROMPT).all()
        assert out.tokens[b, : len(p)].tolist() == p
    n_student = int((prov == PROV_STUDENT).sum())
    n_teacher = int((prov == PROV_TEACHER).sum())
    assert n_student == out.accepted
    assert n_teacher == out.replaced          # no bonus tokens: every teacher token is a replacement
    assert out.generated == n_student + n_teacher == 3 * 30
    assert 0 < out.correction_rate < 1 and out.proposed >= out.accepted
    assert out.response_mask.sum() == out.generated


def test_eos_ends_a_row_and_is_kept_as_target(pair64):
    teacher, student = pair64
    cfg = SampleConfig(mode="skd", k=6, gamma=3, max_new_tokens=20, teacher_temperature=0, student_temperature=0)
    probe = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    eos = probe.responses()[1][5]
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=eos, vocab_size=V, **_gens())
    for full, cut in zip(probe.responses(), out.responses()):
        if eos in full:
            i = full.index(eos)
            assert cut == full[: i + 1]   # stops at the first EOS, EOS included
        else:
            assert cut == full
    b = 1
    last = int(out.lengths[b]) - 1
    assert out.response_mask[b, last] and out.tokens[b, last] == eos


def test_stop_strings_end_a_row():
    from skd.core.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    Vt = len(tok)
    teacher = tiny_model("llama", Vt, seed=3, dtype=torch.float64)
    student = tiny_model("llama", Vt, seed=4, dtype=torch.float64, hidden=16, layers=1)
    prompts = [tok("Q: 1+2=")["input_ids"], tok("Q: 3")["input_ids"]]
    base = dict(mode="skd", k=10, gamma=3, max_new_tokens=40, student_temperature=1.0, student_top_p=1.0,
                teacher_temperature=1.0, teacher_top_p=1.0)
    free = sample(teacher, student, prompts, SampleConfig(**base), tokenizer=tok, eos_token_id=NO_EOS, **_gens())
    resp0 = free.responses()[0]
    n_special = 6  # the char tokenizer's special ids come first
    i = next(i for i in range(5, len(resp0) - 1) if min(resp0[i], resp0[i + 1]) >= n_special)
    stop = tok.decode(resp0[i: i + 2])  # two plain characters row 0 produces: they must end it
    out = sample(teacher, student, prompts, SampleConfig(**base, stop_strings=(stop,)), tokenizer=tok,
                 eos_token_id=NO_EOS, **_gens())
    cut = next(e for e in range(1, len(resp0) + 1) if stop in tok.decode(resp0[:e]))
    assert out.responses()[0] == resp0[:cut]
    assert tok.decode(out.responses()[0]).endswith(stop)
    assert out.response_mask[0].sum() == cut


def test_code_semantics_never_accepts_zero_probability_tokens(pair64):
    teacher, student = pair64
    # top_p tiny: the processed teacher nucleus is one token, so only that token may be accepted.
    cfg = SampleConfig(mode="skd", k=V, gamma=4, semantics="code", teacher_temperature=0.2, teacher_top_p=0.01,
                       teacher_top_k=50, max_new_tokens=20)
    out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
    tl = out.teacher_logits
    for b in range(3):
        p = int(out.prompt_lengths[b])
        for i in range(int(out.response_lengths[b])):
            if out.provenance[b, p + i] == PROV_STUDENT:
                assert out.tokens[b, p + i] == tl[b, i].argmax()


def test_bad_inputs_are_refused(pair64):
    from skd.core.errors import SkdError

    teacher, student = pair64
    with pytest.raises(SkdError):
        sample(teacher, student, [[1], []], SampleConfig(), vocab_size=V)
    with pytest.raises(SkdError):
        sample(None, student, [[1]], SampleConfig(mode="skd"), vocab_size=V)
    with pytest.raises(SkdError):
        SampleConfig(k=-1)
    with pytest.raises(SkdError):
        SampleConfig(gamma=0)


# --------------------------------------------------------------------------- fast paths

@pytest.mark.parametrize("arch,attn", [(a, i) for a in ("llama", "gpt2", "gemma", "qwen2") for i in ("sdpa", "eager")]
                         + [("gemma2", "eager")])   # transformers refuses gemma2's soft-capping under sdpa
def test_inplace_cache_and_prepared_4d_mask_match_transformers_own_path(arch, attn, monkeypatch):
    """KVStream's preallocated cache layers and its own 4D mask against transformers' DynamicCache
    and 2D-mask path: same tokens, same kept teacher logits, through holes (K = 1 rejects often),
    dropped rows (ragged lengths, EOS) and compaction (long enough for holes to dominate)."""
    import skd.core.kvcache as KV

    # float32 for eager: transformers' own eager path turns left padding into NaN in float64 (a
    # fully masked pad row adds finfo.min twice); the prepared mask lets a pad row see itself.
    dtype = torch.float64 if attn == "sdpa" else torch.float32
    teacher = tiny_model(arch, V, seed=5, dtype=dtype, hidden=32, layers=2)
    student = tiny_model(arch, V, seed=6, dtype=dtype, hidden=16, layers=1)
    for m in (teacher, student):
        m.config._attn_implementation = attn
    prompts = [[5, 9, 12, 7], [8, 3], [11, 14, 6, 20, 21, 22, 30], [4]]
    cfg = SampleConfig(mode="skd", k=1, gamma=3, max_new_tokens=70, keep_teacher_logits=True,
                       student_temperature=1.0, student_top_p=1.0, teacher_temperature=1.0, teacher_top_p=1.0)
    run = lambda: sample(teacher, student, prompts, cfg, eos_token_id=[2], vocab_size=V, **_gens())  # noqa: E731
    fast = run()
    if arch == "gemma2":   # sliding-window layers: both fast paths must stand aside
        assert KV.mask4d_kind(teacher) is None
    else:
        assert KV.mask4d_kind(teacher) == {"sdpa": "bool", "eager": "float"}[attn]
    monkeypatch.setattr(KV, "mask4d_kind", lambda model: None)
    monkeypatch.setattr(KV, "use_growing_layers", lambda cache, extra: None)
    ref = run()
    assert fast.responses() == ref.responses()
    assert len({len(r) for r in ref.responses()}) > 1            # ragged: rows were dropped
    assert ref.replaced > 10                                      # holes were made
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast.teacher_logits, ref.teacher_logits, rtol=tol, atol=tol)


def test_a_fast_path_that_stands_aside_says_so_once_and_keeps_the_tokens(monkeypatch):
    """A failing guard (here: transformers outside SUPPORTED_TRANSFORMERS) turns the in-place cache
    and the prepared 4D mask off with one FastPathOff notice each, once per process, naming the
    fast path, the reason and the cost; the tokens, provenance and kept logits stay the same."""
    import warnings

    import skd.core.kvcache as KV

    teacher = tiny_model("llama", V, seed=5, dtype=torch.float64, hidden=32, layers=2)
    student = tiny_model("llama", V, seed=6, dtype=torch.float64, hidden=16, layers=1)
    prompts = [[5, 9, 12, 7], [8, 3], [4]]
    cfg = SampleConfig(mode="skd", k=1, gamma=3, max_new_tokens=40, keep_teacher_logits=True,
                       student_temperature=1.0, student_top_p=1.0, teacher_temperature=1.0, teacher_top_p=1.0)
    run = lambda: sample(teacher, student, prompts, cfg, eos_token_id=[2], vocab_size=V, **_gens())  # noqa: E731

    def notices(calls):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = [run() for _ in range(calls)]
        return outs, [str(w.message) for w in caught if issubclass(w.category, KV.FastPathOff)]

    (fast,), quiet = notices(1)
    assert quiet == []                                   # llama under sdpa: both fast paths on
    monkeypatch.setattr(KV, "SUPPORTED_TRANSFORMERS", ((99, 0), (100, 0)))
    slow, said = notices(2)                              # two calls, four streams
    assert len(said) == 2, said
    assert sum(m.startswith("skd: in-place KV cache off: transformers ") for m in said) == 1
    assert sum(m.startswith("skd: prepared 4D attention mask off: transformers ") for m in said) == 1
    assert all("outside the tested range >= 99.0, < 100.0" in m and "stays correct but slower" in m
               for m in said)
    assert KV.mask4d_kind(teacher) is None
    for out in slow:
        assert out.responses() == fast.responses()
        assert torch.equal(out.provenance, fast.provenance)
        assert (out.proposed, out.accepted, out.replaced, out.rounds) == (
            fast.proposed, fast.accepted, fast.replaced, fast.rounds)
        torch.testing.assert_close(out.teacher_logits, fast.teacher_logits, rtol=1e-9, atol=1e-9)


def test_growing_layer_readopts_tensors_replaced_from_outside():
    """Beam-style code that swaps .keys/.values for new tensors must not be overwritten later."""
    from transformers.cache_utils import DynamicLayer
    import skd.core.kvcache as KV

    ref, grow = DynamicLayer(), KV.growing_layer_class()()
    k0 = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    ref.update(k0, k0 + 1)
    grow.adopt(k0, k0 + 1, capacity=4)              # as KVStream makes them, from a filled layer
    for layer in (ref, grow):
        layer.batch_select_indices(torch.tensor([1]))
        layer.keys = layer.keys * 2                  # replaced from outside
        layer.values = layer.values * 2
        for s in range(3):                           # grows past the capacity
            k = torch.full((1, 1, 2, 4), float(s), dtype=torch.float64)
            layer.update(k, k + 1)
    torch.testing.assert_close(grow.keys, ref.keys)
    torch.testing.assert_close(grow.values, ref.values)
    assert grow.keys.shape[2] == 9
    for layer in (ref, grow):                        # reset, then used again
        layer.reset()
        layer.update(k0, k0 + 1)
    torch.testing.assert_close(grow.keys, ref.keys)


@pytest.mark.parametrize("gamma", [1, 3])
@pytest.mark.parametrize("keep_bonus", [False, True])
def test_the_teacher_pass_covers_the_draft_less_its_last_token_without_the_bonus(pair64, keep_bonus, gamma):
    """Without the bonus token no round needs the teacher's distribution after its last drafted token: each
    verification pass has as many positions as the round's draft (one more with the bonus), and the
    kept teacher logits still equal a fresh forward."""
    teacher, student = (copy.deepcopy(m).float() for m in pair64)
    widths = []
    # The decoder body runs in every teacher pass, whole-model or with the output layer put off.
    hook = teacher.get_decoder().register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]),
                                                           with_kwargs=True)
    try:
        out = sample(teacher, student, PROMPTS, SampleConfig(mode="skd", k=4, gamma=gamma, keep_bonus=keep_bonus,
                                                             max_new_tokens=20, student_temperature=1.0,
                                                             teacher_temperature=1.0), eos_token_id=NO_EOS,
                     vocab_size=V, **_gens())
    finally:
        hook.remove()
    passes = widths[1:]                                   # widths[0]: the prompts' prefill
    full = gamma + 1 if keep_bonus else gamma
    assert len(passes) == out.rounds and out.accepted > 0 and out.replaced > 0
    assert max(passes) == full and all(1 <= w <= full for w in passes)
    if gamma == 1:                                        # every round drafts one token
        assert set(passes) == {full}
    for b, ref in enumerate(_fresh_teacher_logits(teacher, out)):
        torch.testing.assert_close(out.teacher_logits[b, :ref.shape[0]], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma", "qwen2"])
@pytest.mark.parametrize("mode", ["skd", "student"])
def test_the_prefill_runs_the_output_layer_on_the_last_column_only(arch, mode, monkeypatch):
    """The prefill only fills the caches (the prompts' last tokens are fed by the first round), so it
    asks the model for one column of logits where the model takes `logits_to_keep`: the output layer
    never sees the prompt positions. Tokens and kept teacher logits are those of the full-logits prefill,
    bit for bit."""
    import skd.core.kvcache as KV
    from skd.core.position_logits import keeps_positions

    teacher = tiny_model(arch, V, seed=5, dtype=torch.float64, hidden=32, layers=2)
    student = tiny_model(arch, V, seed=6, dtype=torch.float64, hidden=16, layers=1)
    cfg = SampleConfig(mode=mode, k=2, gamma=3, max_new_tokens=12, keep_teacher_logits=True,
                       student_temperature=1.0, student_top_p=1.0, teacher_temperature=1.0, teacher_top_p=1.0)

    def run():
        seen = {id(m): [] for m in (teacher, student)}
        hooks = [m.get_output_embeddings().register_forward_hook(
            lambda mod, a, out, key=id(m): seen[key].append(a[0].shape[1])) for m in (teacher, student)]
        try:
            out = sample(teacher, student, PROMPTS, cfg, eos_token_id=NO_EOS, vocab_size=V, **_gens())
        finally:
            for h in hooks:
                h.remove()
        return out, seen

    fast, seen = run()
    longest = max(len(p) for p in PROMPTS) - 1                 # the prefill holds every prompt but its last token
    for m in (teacher, student):
        if seen[id(m)]:                                        # mode "student" never runs the teacher
            assert keeps_positions(m) and seen[id(m)][0] == 1  # transformers' causal LMs all take logits_to_keep
    monkeypatch.setattr(KV, "keeps_positions", lambda model: False)
    ref, seen_ref = run()
    assert seen_ref[id(student)][0] == longest                 # the old path: every prompt column
    assert fast.responses() == ref.responses()
    if mode == "skd":
        assert torch.equal(fast.teacher_logits, ref.teacher_logits)

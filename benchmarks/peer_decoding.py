"""Greedy decoding with a draft model: transformers' assisted generation against skd's speculative_generate,
and both against the teacher decoding alone, on the same prompts, repeats interleaved.

Public: run(teacher, drafts, tokenizer, prompts, *, batch_size, max_new_tokens, gamma, repeats) -> dict.

Rows (each decodes every prompt once per repeat; greedy, at most max_new_tokens, EOS ends a response):
  teacher_hf_b1 / _bN     transformers teacher.generate(do_sample=False), one prompt at a time / in
                          left-padded batches of N;
  teacher_skd_b1 / _bN    skd's own teacher decoding (skd.core.sampling.sample, mode teacher, temperature 0);
  hf_assisted_b1/d        teacher.generate(assistant_model=d, do_sample=False), one prompt at a time
                          (transformers' assisted generation is B = 1 only), its default draft schedule;
  skd_spec_b1/d, _bN/d    skd.core.speculative.speculative_generate(teacher, d, greedy), B = 1 / N.
The reference is teacher_hf_b1: every row's outputs are compared with it token for token
(`outputs_match_teacher`, and how many prompts match). Throughput = response tokens / median
seconds; speedups are over the teacher alone at the same batch size, decoded by transformers and by skd.

Per draft, untimed: `teacher_forced_match`, the share of the reference's tokens that the draft's argmax
predicts from the teacher's own prefix (one forward per prompt): the greedy acceptance a draft would
see if every position were put to the test, whatever the schedule; and `break_even_acceptance`, the
acceptance above which some draft length pays under the cost model of `--gamma auto`
(skd.core.rules.drafting_pays with the teacher / draft weight-byte ratio): below it no schedule of
this draft beats the teacher alone.
"""
from __future__ import annotations

import statistics

import torch

from skd.core.models import weight_bytes
from skd.core.rules import drafting_pays
from skd.core.timing import clock


def _cut(ids: list[int], eos: set[int]) -> list[int]:
    """A response up to and including its first EOS (generate() pads finished rows after it)."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def _teacher_forced_match(draft, prompts: list[list[int]], responses: list[list[int]], V: int) -> float:
    """Share of the response tokens the draft's argmax predicts from the prompt and the response so far."""
    dev = next(draft.parameters()).device
    hits = total = 0
    for p, r in zip(prompts, responses):
        if not r:
            continue
        ids = torch.tensor([p + r], device=dev)
        pred = draft(input_ids=ids).logits[0, len(p) - 1: len(p) + len(r) - 1, :V].argmax(-1).cpu()
        hits += int((pred == torch.tensor(r)).sum())
        total += len(r)
    return hits / max(1, total)


def _break_even(cost_ratio: float, gamma_max: int) -> float:
    """The smallest acceptance (to 1e-4) at which drafting pays: the bonus token is kept in decoding."""
    lo, hi = 0.0, 1.0
    if drafting_pays(lo, cost_ratio, gamma_max, True):
        return 0.0
    for _ in range(14):   # drafting_pays is monotone in the acceptance
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if drafting_pays(mid, cost_ratio, gamma_max, True) else (mid, hi)
    return hi


def _greedy_kwargs(eos: list[int], pad: int, max_new_tokens: int) -> dict:
    # temperature / top-p / top-k unset: a model's generation_config may carry sampling defaults.
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=max_new_tokens,
                min_new_tokens=0, eos_token_id=eos, pad_token_id=pad)


def run(teacher, drafts: dict, tok, prompts: list[list[int]], *, batch_size: int, max_new_tokens: int,
        gamma="auto", repeats: int = 3, prices: str = "weights") -> dict:
    """drafts: {name: model}. Returns {"results": {row: {...}}, "ratios": {...}, "settings": {...}}.

    prices: what gamma auto prices a teacher pass at in the speculative rows: "weights" (the weight-byte
    ratio, speculative_generate's default) or "measure" (forward_prices.measure_teacher_prices per draft and
    batch size, on the first batch of prompts, before the warm-up; recorded under drafts[name])."""
    from skd.core.sampling import SampleConfig, sample
    from skd.core.speculative import speculative_generate
    from skd.core.stops import eos_ids

    dev = next(teacher.parameters()).device
    devices = [dev] + [next(d.parameters()).device for d in drafts.values()]
    V = len(tok)
    eos = eos_ids([teacher, *drafts.values()], None)
    eos_set = set(eos)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    N = batch_size
    greedy = _greedy_kwargs(eos, pad, max_new_tokens)

    @torch.no_grad()
    def hf(batch, assistant=None):
        P = max(len(p) for p in batch)
        ids = torch.full((len(batch), P), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(batch):   # left padding: every row's next token is at position P
            ids[b, P - len(p):] = torch.tensor(p)
            mask[b, P - len(p):] = 1
        extra = {"assistant_model": assistant} if assistant is not None else {}
        out = teacher.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **greedy, **extra)
        return [_cut(row[P:].tolist(), eos_set) for row in out], None

    def own_teacher(batch):
        cfg = SampleConfig(mode="teacher", teacher_temperature=0.0, teacher_top_p=1.0, max_new_tokens=max_new_tokens,
                           stop_strings=(), keep_teacher_logits=False)
        return sample(teacher, None, batch, cfg, tokenizer=tok, vocab_size=V).responses(), None

    sizes = tuple(dict.fromkeys((1, N)))   # the speculative rows' batch sizes
    measured: dict = {}   # (draft name, batch size) -> (prices per pass width, forward costs in ms)
    if prices == "measure" and gamma == "auto":
        from skd.core.forward_prices import measure_teacher_prices

        for name, d in drafts.items():
            for bs in sizes:
                measured[(name, bs)] = measure_teacher_prices(teacher, d, prompts[:bs], vocab_size=V, pad_id=pad,
                                                              gamma_max=SampleConfig(gamma=gamma).max_draft)

    def spec(draft, name, bs):
        tp = measured[(name, bs)][0] if (name, bs) in measured else None

        def go(batch):
            return speculative_generate(teacher, draft, batch, gamma=gamma, max_new_tokens=max_new_tokens,
                                        temperature=0.0, tokenizer=tok, vocab_size=V, teacher_prices=tp)
        return go

    rows = {"teacher_hf_b1": (lambda b: hf(b), 1, None, "transformers generate(), greedy, one prompt at a time"),
            f"teacher_hf_b{N}": (lambda b: hf(b), N, None,
                                 f"transformers generate(), greedy, left-padded batches of {N}"),
            "teacher_skd_b1": (own_teacher, 1, None, "skd sample(mode teacher, temperature 0), one prompt at a time"),
            f"teacher_skd_b{N}": (own_teacher, N, None, f"skd sample(mode teacher, temperature 0), batches of {N}")}
    for name, d in drafts.items():
        rows[f"hf_assisted_b1/{name}"] = (lambda b, d=d: hf(b, d), 1, name,
                                           "transformers generate(assistant_model=draft, do_sample=False), B = 1")
        how = f"gamma {gamma}" + (", measured prices" if measured else "")
        rows[f"skd_spec_b1/{name}"] = (spec(d, name, 1), 1, name, f"skd speculative_generate(greedy, {how}), B = 1")
        rows[f"skd_spec_b{N}/{name}"] = (spec(d, name, N), N, name,
                                          f"skd speculative_generate(greedy, {how}), batches of {N}")

    def decode(fn, bs):
        outs, stats = [], None
        for i in range(0, len(prompts), bs):
            o, st = fn(prompts[i: i + bs])
            outs += o
            if st is not None:
                stats = st if stats is None else stats + st
        return outs, stats

    for fn, bs, _, _ in rows.values():   # warm-up: one batch of every row
        fn(prompts[:bs])
    seconds = {name: [] for name in rows}
    outputs = {}
    for _ in range(repeats):
        for name, (fn, bs, _, _) in rows.items():
            t0 = clock(*devices)
            outs, stats = decode(fn, bs)
            seconds[name].append(clock(*devices) - t0)
            outputs[name] = (outs, stats)   # greedy: the same tokens every repeat
    ref = outputs["teacher_hf_b1"][0]
    results = {}
    for name, (_, bs, draft, what) in rows.items():
        outs, stats = outputs[name]
        n = sum(len(o) for o in outs)
        secs = statistics.median(seconds[name])
        same = sum(o == r for o, r in zip(outs, ref))
        row = {"measures": what, "draft": draft, "batch_size": bs, "prompts": len(prompts), "tokens": n,
               "seconds": secs, "seconds_each": seconds[name], "tokens_per_s": n / secs,
               "outputs_match_teacher": same == len(ref), "prompts_matching_teacher": same}
        if stats is not None:
            row.update(acceptance_rate=stats.acceptance_rate, mean_accepted_per_round=stats.mean_accepted_per_round,
                       teacher_forwards_per_token=stats.teacher_forwards_per_token,
                       teacher_only_round_share=stats.teacher_only_rounds / max(1, stats.rounds))
        results[name] = row
    ratios = {}
    for name, row in results.items():
        if row["draft"] is None:
            continue
        bs = row["batch_size"]
        ratios[f"{name}_over_teacher_hf_b{bs}"] = row["tokens_per_s"] / results[f"teacher_hf_b{bs}"]["tokens_per_s"]
        ratios[f"{name}_over_teacher_skd_b{bs}"] = row["tokens_per_s"] / results[f"teacher_skd_b{bs}"]["tokens_per_s"]
    for name in drafts:   # assisted generation runs at B = 1 only: both skd sizes against it
        for bs in (1, N):
            ratios[f"skd_spec_b{bs}/{name}_over_hf_assisted_b1/{name}"] = (
                results[f"skd_spec_b{bs}/{name}"]["tokens_per_s"] / results[f"hf_assisted_b1/{name}"]["tokens_per_s"])
    draft_info = {}
    for name, d in drafts.items():
        ratio = weight_bytes(teacher) / max(1, weight_bytes(d))
        draft_info[name] = {"teacher_forced_match": _teacher_forced_match(d, prompts, ref, V),
                            "cost_ratio": ratio,
                            "break_even_acceptance": _break_even(ratio, SampleConfig(gamma=gamma).max_draft)}
        for bs in sizes:
            if (name, bs) in measured:
                tp, costs = measured[(name, bs)]
                draft_info[name].setdefault("teacher_prices", {})[str(bs)] = {"prices": list(tp), "forward_ms": costs}
    gen_cfg = next(iter(drafts.values())).generation_config if drafts else None
    keys = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
    # None: the draft's generation_config leaves it to transformers (5.x: 20 tokens, constant, threshold 0.4)
    assisted = {k: getattr(gen_cfg, k, None) for k in keys} if gen_cfg is not None else {}
    return {"results": results, "ratios": ratios, "drafts": draft_info,
            "settings": {"batch_size": N, "max_new_tokens": max_new_tokens, "gamma": gamma, "greedy": True,
                         "prices": "measure" if measured else "weights",
                         "stop": "EOS only", "reference": "teacher_hf_b1", "hf_assisted_defaults": assisted}}

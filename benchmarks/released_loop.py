"""The released code's SKD sampling procedure, rebuilt on transformers' public generation API.

Public: released_loop_sample(teacher, student, prompt_ids, cfg, *, tokenizer, vocab_size,
eos_token_id=None, seed=0) -> (responses, stats).

The authors' trainer (google-research speculative_kd, train/ddp_skd.py) samples one prompt at a time
through `teacher.generate(..., assistant_model=student)` of a forked transformers 4.44.2 assisted
decoding (candidate_generator.py): every round, the student's drafts come from a full
`student.generate(max_new_tokens=gamma, ...)` call that resumes from the student's cropped KV cache
(stop strings and the tokenizer passed along); the teacher scores the candidate in one forward
pass over its own KV cache; the accepted prefix plus the teacher's token are appended; the teacher's
cache is cropped to the new length - 1. This module reproduces that orchestration with our own code
on today's transformers (DynamicCache, generate, crop), so that `skd bench sampling` can time the
procedure users of the released code run, beside our batched sampler. The acceptance test and the
teacher's token use skd's SKD rule, so the sequences follow the same distribution as
skd.core.sampling.sample (greedy settings give the same tokens: tests/test_released_loop.py).
Not reproduced: the released code's text round trip and its sampling bugs (CONTRACT.md §2).
"""
from __future__ import annotations

import torch

from skd.core.kvcache import cache_kwarg, returned_cache
from skd.core.rules import SkdRule, sample_tokens
from skd.core.sampling import SampleConfig
from skd.core.stops import StopChecker, eos_ids


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def _crop_to(cache, n: int) -> None:
    """Keep the first n positions (a negative argument removes tokens in every transformers version)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


def _student_settings(cfg: SampleConfig) -> dict:
    """The student's generate() sampling arguments, as skd.core.sampling drafts (top-k 50 is
    transformers' default and must be switched off explicitly in paper semantics)."""
    if cfg.semantics == "paper":
        t, p, k = cfg.student_temperature, cfg.student_top_p, 0
    else:  # code semantics: the released code drafts with the teacher's generation settings
        t, p, k = cfg.teacher_temperature, cfg.teacher_top_p, cfg.teacher_top_k
    if t == 0:
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return dict(do_sample=True, temperature=t, top_p=p, top_k=k)


@torch.no_grad()
def released_loop_sample(teacher, student, prompt_ids: list[list[int]], cfg: SampleConfig, *, tokenizer,
                         vocab_size: int, eos_token_id=None, seed: int = 0) -> tuple[list[list[int]], dict]:
    """Sample one SKD response per prompt, one prompt at a time, the way the released code does."""
    dev = next(teacher.parameters()).device
    s_dev = next(student.parameters()).device
    rule = SkdRule(cfg)
    eos = eos_ids([teacher, student], eos_token_id)
    stopper = StopChecker(tokenizer, cfg.stop_strings) if cfg.stop_strings else None
    pad = next((int(c) for c in (getattr(tokenizer, "pad_token_id", None), *eos) if isinstance(c, int)), 0)
    s_kw, t_kw = cache_kwarg(student), cache_kwarg(teacher)
    s_args = _student_settings(cfg)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)   # the teacher's uniforms
    torch.manual_seed(seed)                                    # generate() samples from the global RNG
    responses, stats = [], {"rounds": 0, "proposed": 0, "accepted": 0, "replaced": 0, "generated": 0,
                            "student_generate_calls": 0, "teacher_forwards": 0}
    R, V = cfg.max_new_tokens, vocab_size
    for prompt in prompt_ids:
        ids = torch.tensor([prompt], dtype=torch.long, device=dev)
        P = ids.shape[1]
        s_cache, t_cache = _new_cache(student), _new_cache(teacher)
        while True:
            n = ids.shape[1]
            budget = min(cfg.gamma, R - (n - P))
            if budget <= 0:
                break
            # 1. draft: a full generate() call of the student, resuming from its cache
            _crop_to(s_cache, n - 1)
            out = student.generate(input_ids=ids.to(s_dev), attention_mask=torch.ones_like(ids, device=s_dev),
                                   max_new_tokens=budget, min_new_tokens=0, eos_token_id=eos, pad_token_id=pad,
                                   stop_strings=list(cfg.stop_strings) or None, tokenizer=tokenizer,
                                   return_dict_in_generate=True, output_scores=True,
                                   **{s_kw: s_cache}, **s_args)
            s_cache = returned_cache(out)
            cand = out.sequences.to(dev)
            d = cand.shape[1] - n
            stats["student_generate_calls"] += 1
            if d == 0:
                break
            draft = cand[:, n:]
            ended = int(draft[0, -1]) in eos or d < budget or d == R - (n - P)
            # 2. verify: one teacher forward over the tokens its cache does not hold
            _crop_to(t_cache, n - 1)
            c = t_cache.get_seq_length()
            t_out = teacher(input_ids=cand[:, c:], attention_mask=torch.ones_like(cand), use_cache=True,
                            **{t_kw: t_cache})
            t_cache = returned_cache(t_out)
            t_logits = t_out.logits[:, -(d + 1):, :V]
            stats["teacher_forwards"] += 1
            # 3. acceptance: the longest prefix inside the teacher's top-K
            d_len = torch.tensor([d], device=dev)
            n_acc = int(rule.accept(t_logits, draft, d_len, None, None)[0])
            full = n_acc == d
            need_tok = not full or (not ended and rule.keep_bonus)
            new = draft[:, :n_acc]
            if need_tok:   # 4./5. the teacher's token at the first rejection (or the bonus row)
                u = torch.rand(1, generator=gen, device=dev, dtype=torch.float64)
                tok = sample_tokens(t_logits[:, n_acc], u, **rule.teacher)
                new = torch.cat([new, tok.view(1, 1)], 1)
                stats["replaced"] += int(not full)
            ids = torch.cat([ids, new], 1)
            stats["rounds"] += 1
            stats["proposed"] += d
            stats["accepted"] += n_acc
            # end of round: EOS, stop strings, budget (the teacher's stopping criteria)
            hit = next((i for i, t in enumerate(new[0].tolist()) if t in eos), None)
            if hit is not None:
                ids = ids[:, : n + hit + 1]
                break
            if stopper is not None:
                cut = stopper.cut(ids[0, P:].tolist(), n - P)
                if cut is not None:
                    ids = ids[:, : P + cut]
                    break
            if ids.shape[1] - P >= R:
                break
        responses.append(ids[0, P:].tolist())
        stats["generated"] += ids.shape[1] - P
    return responses, stats

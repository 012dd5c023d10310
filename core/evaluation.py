"""Task evaluation: batched generation (KV cache, ragged prompts, greedy by default) + task metrics.

Public: generate(model, tokenizer, prompt_ids, *, batch_size, max_new_tokens, stop_strings,
temperature, top_p, seed, on_batch) -> list[list[int]]; evaluate_model(model, tokenizer, task,
examples, ..., grader) -> (metrics, predictions).

Generation reuses the sampler of skd.core.sampling in mode "student" (one model, temperature 0
= greedy as in the paper's evaluation, CONTRACT.md §6). Prompts are sorted by length before
batching so a batch carries little padding; results come back in the caller's order.
"""
from __future__ import annotations

from typing import Callable

import torch

from skd.core import harness_gsm8k
from skd.core.sampling import SampleConfig, sample
from skd.core.timing import clock


def generate(model, tokenizer, prompt_ids: list[list[int]], *, batch_size: int = 32, max_new_tokens: int = 256,
             stop_strings: tuple[str, ...] = (), temperature: float = 0.0, top_p: float = 1.0, seed: int = 20,
             on_batch: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Response token ids per prompt (EOS included when produced). on_batch(n_prompts, n_tokens)."""
    cfg = SampleConfig(mode="student", student_temperature=temperature, student_top_p=top_p,
                       max_new_tokens=max_new_tokens, stop_strings=tuple(stop_strings), keep_teacher_logits=False)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    out: list[list[int] | None] = [None] * len(prompt_ids)
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(order), batch_size):
            idx = order[lo: lo + batch_size]
            s = sample(None, model, [prompt_ids[i] for i in idx], cfg, student_generator=gen,
                       tokenizer=tokenizer, vocab_size=len(tokenizer))
            for i, r in zip(idx, s.responses()):
                out[i] = r
            if on_batch is not None:
                on_batch(len(idx), s.generated)
    finally:
        model.train(was)
    return out  # type: ignore[return-value]


def evaluate_model(model, tokenizer, task, examples, *, batch_size: int = 32, max_new_tokens: int | None = None,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int = 20,
                   on_batch: Callable[[int, int], None] | None = None, teacher=None,
                   grader: str | None = None) -> tuple[dict, list[dict]]:
    """Generate for every example and score with the task's metric. Returns (metrics, predictions).
    `grader`: how accuracy compares answers (skd.core.metrics.GRADERS; default: the task's); gsm8k's
    metrics and predictions also hold lm-evaluation-harness's strict_match and flexible_extract.
    With `teacher` (sharing the tokenizer), the metrics also hold how the teacher judges these outputs:
    teacher_logprob_per_token and teacher_top1_agreement (skd.core.graded.teacher_relative)."""
    from skd.core.data import tokenize_examples

    toks = tokenize_examples(examples, tokenizer, task.render_prompt)
    prompts = [t.prompt_ids for t in toks]
    dev = next(model.parameters()).device
    t0 = clock(dev)
    responses = generate(model, tokenizer, prompts, batch_size=batch_size,
                         max_new_tokens=max_new_tokens or task.max_new_tokens,
                         stop_strings=tuple(task.eval_stop_strings), temperature=temperature, top_p=top_p,
                         seed=seed, on_batch=on_batch)
    wall = clock(dev) - t0
    outputs = [task.truncate(tokenizer.decode(r, skip_special_tokens=True)) for r in responses]
    grader = task.resolve_grader(grader)
    refs = [task.score_reference(ex) for ex in examples]   # full solutions where the harness scores need them
    metrics = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
               for k, v in task.score(outputs, refs, grader=grader).items()}
    n_tokens = sum(len(r) for r in responses)
    if teacher is not None:
        from skd.core.graded import teacher_relative

        judged = teacher_relative(teacher, prompts, responses, pad_id=tokenizer.pad_token_id,
                                  batch_size=batch_size, vocab_size=len(tokenizer))
        metrics.update(teacher_logprob_per_token=judged["teacher_logprob_per_token"],
                       teacher_top1_agreement=judged["teacher_top1_agreement"])
    metrics.update(examples=len(examples), generated_tokens=n_tokens, wall_time_s=wall,
                   tokens_per_s=n_tokens / wall if wall > 0 else 0.0)
    if task.answer_format != "text" and task.manyway_preset is None:
        metrics["grader"] = grader
    preds = []
    for ex, ref, text, out in zip(examples, refs, [tokenizer.decode(t.prompt_ids) for t in toks], outputs):
        pred = {"prompt": text, "output": out, "extracted": task.extract(out), "reference": ex.reference,
                "correct": task.correct(out, ex.reference, grader)}
        if task.harness == "gsm8k":
            pred.update(strict_match=harness_gsm8k.strict_match(out, ref),
                        flexible_extract=harness_gsm8k.flexible_match(out, ref))
        preds.append(pred)
    return metrics, preds

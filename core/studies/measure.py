"""What the studies measure of a model: held-out accuracy and its quality as the teacher's draft.

Public: prompt_ids(task, tokenizer, examples) -> list[list[int]], task_scores(model, tokenizer, task,
examples, *, max_new_tokens, batch_size) -> dict, accuracy(...) -> float, graded_score(scores) -> float
| None, draft_stats(teacher, student, tokenizer, task,
prompts, *, gamma, max_new_tokens) -> SpecStats.
Accuracy is greedy with the task's scoring (exact match for arith, the "####" answer for GSM8K,
CONTRACT.md §6); the draft is greedy speculative decoding with the teacher (CONTRACT.md §7).
"""
from __future__ import annotations


def prompt_ids(task, tokenizer, examples) -> list[list[int]]:
    """The prompt token ids of `examples`, rendered through the task's prompt and the chat template."""
    from skd.core.data import tokenize_examples

    return [t.prompt_ids for t in tokenize_examples(examples, tokenizer, task.render_prompt)]


GRADED_KEYS = ("graded", "partial_credit")  # manyway's share of valid lines (first); arith's partial credit


def task_scores(model, tokenizer, task, examples, *, max_new_tokens: int, batch_size: int = 64) -> dict:
    """The task's scores of `model` on `examples` (greedy decoding): accuracy and, where the task has
    one, its graded score (see graded_score)."""
    from skd.core.evaluation import evaluate_model

    metrics, _ = evaluate_model(model, tokenizer, task, examples, batch_size=batch_size,
                                max_new_tokens=max_new_tokens)
    return metrics


def accuracy(model, tokenizer, task, examples, *, max_new_tokens: int, batch_size: int = 64) -> float:
    """The task's accuracy of `model` on `examples` (greedy decoding)."""
    return float(task_scores(model, tokenizer, task, examples, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)["accuracy"])


def graded_score(scores: dict) -> float | None:
    """The graded score among a task's `scores` (partial credit on arith, valid-line share on manyway),
    None for tasks without one."""
    return next((float(scores[k]) for k in GRADED_KEYS if scores.get(k) is not None), None)


def draft_stats(teacher, student, tokenizer, task, prompts: list[list[int]], *, gamma: int, max_new_tokens: int):
    """`student` as the greedy speculative-decoding draft of `teacher` on `prompts`: its SpecStats
    (acceptance rate, teacher passes per generated token, ...)."""
    from skd.core.speculative import speculative_generate

    _, stats = speculative_generate(teacher, student, prompts, gamma=gamma, max_new_tokens=max_new_tokens,
                                    tokenizer=tokenizer, stop_strings=tuple(task.eval_stop_strings),
                                    vocab_size=len(tokenizer))
    return stats

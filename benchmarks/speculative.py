"""Speculative decoding with each student as draft for the teacher, against teacher-alone decoding.

Public: run(teacher, students, *, task, n_prompts, batch_size, gammas, max_new_tokens,
temperature, device, dtype, seed, int8) -> dict; plot(result, path) -> str | None.

Per student and gamma: acceptance rate (accepted / drafted), mean accepted tokens per round,
tokens per round, teacher forward passes per generated token (per sequence; 1.0 = plain decoding),
tokens/s, and the speedup over teacher-alone decoding of the same prompts at the same batch size,
measured in the same run. Greedy by default: then every speculative output must equal the
teacher's own output, which the benchmark checks (`outputs_match_teacher`). With int8, each
student is measured a second time as an int8 copy (skd.core.int8_draft), labelled "<student>+int8".
"""
from __future__ import annotations

import copy

import torch

from skd.benchmarks.common import load_model_and_tokenizer, task_prompts, timed
from skd.core.environment import env_info
from skd.core.sampling import SampleConfig, sample
from skd.core.speculative import speculative_generate
from skd.core.studies.report import save_plot


def _batches(prompts, batch_size):
    return [prompts[i: i + batch_size] for i in range(0, len(prompts), batch_size)]


def run(teacher: str, students: list[str], *, task: str = "arith", n_prompts: int = 32, batch_size: int = 32,
        gammas=(1, 2, 4, 8), max_new_tokens: int = 64, temperature: float = 0.0, device: str = "cpu",
        dtype: str = "float32", seed: int = 20, data: str | None = None, int8: bool = False) -> dict:
    dev = torch.device(device)
    t_model, tok = load_model_and_tokenizer(teacher, device, dtype)
    prompts, task_obj = task_prompts(task, tok, n_prompts, seed=seed, data=data)
    stops = tuple(task_obj.eval_stop_strings)
    V = len(tok)

    def teacher_alone():
        cfg = SampleConfig(mode="teacher", teacher_temperature=temperature, teacher_top_p=1.0,
                           max_new_tokens=max_new_tokens, stop_strings=stops, keep_teacher_logits=False)
        outs = []
        g = torch.Generator(device=dev).manual_seed(seed)
        for b in _batches(prompts, batch_size):
            outs += sample(t_model, None, b, cfg, teacher_generator=g, tokenizer=tok, vocab_size=V).responses()
        return outs

    teacher_alone()  # warm-up (allocator, kernels) so the first timed variant is not penalised
    ref, t_secs = timed(teacher_alone, dev)
    t_tokens = sum(len(r) for r in ref)
    base = {"tokens": t_tokens, "seconds": t_secs, "tokens_per_s": t_tokens / t_secs}
    rows = []
    drafts = []
    for name in students:
        s_model, s_tok = load_model_and_tokenizer(name, device, dtype)
        if s_tok.get_vocab() != tok.get_vocab():
            from skd.core.errors import SkdError
            raise SkdError(f"student {name} and teacher {teacher} use different tokenizers",
                           "a draft model must share the teacher's tokenizer")
        variants = [(name, s_model)]
        if int8:
            from skd.core.int8_draft import quantize_draft

            q_model = copy.deepcopy(s_model)
            quantize_draft(q_model)
            variants.append((f"{name}+int8", q_model))
        for label, draft in variants:
            drafts.append(label)
            for gamma in gammas:
                def spec():
                    outs, agg = [], None
                    g = torch.Generator(device=dev).manual_seed(seed)
                    for b in _batches(prompts, batch_size):
                        o, st = speculative_generate(t_model, draft, b, gamma=gamma, max_new_tokens=max_new_tokens,
                                                     temperature=temperature, generator=g, tokenizer=tok,
                                                     stop_strings=stops, vocab_size=V)
                        outs += o
                        agg = st if agg is None else agg + st
                    return outs, agg
                (outs, stats), secs = timed(spec, dev)
                tps = stats.generated / secs
                rows.append({"student": label, "gamma": gamma, **stats.to_dict(), "seconds": secs,
                             "tokens_per_s": tps, "speedup": tps / base["tokens_per_s"],
                             "outputs_match_teacher": (outs == ref) if temperature == 0 else None})
        del variants, draft, s_model
    return {"bench": "speculative", "env": env_info(dev),
            "config": {"teacher": teacher, "students": list(students), "drafts": drafts, "int8": int8, "task": task,
                       "n_prompts": len(prompts),
                       "batch_size": batch_size, "gammas": list(gammas), "max_new_tokens": max_new_tokens,
                       "temperature": temperature, "dtype": dtype, "seed": seed},
            "teacher_alone": base, "results": rows}


def plot(result: dict, path: str) -> str | None:
    def draw(plt):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for name in result["config"].get("drafts", result["config"]["students"]):
            rs = [r for r in result["results"] if r["student"] == name]
            g = [r["gamma"] for r in rs]
            a1.plot(g, [r["speedup"] for r in rs], marker="o", label=name)
            a2.plot(g, [r["acceptance_rate"] for r in rs], marker="o", label=name)
        a1.axhline(1.0, color="grey", lw=0.8, ls="--")
        a1.set(xlabel="gamma (draft length)", ylabel="speedup over teacher alone", title="Speedup")
        a2.set(xlabel="gamma (draft length)", ylabel="accepted / drafted", title="Acceptance", ylim=(0, 1))
        a2.legend(fontsize=8)
        env = result["env"]
        fig.suptitle(f"speculative decoding · teacher {result['config']['teacher']} · {env['device_name']}", fontsize=9)
        return fig
    return save_plot(path, draw)

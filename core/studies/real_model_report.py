"""The real-model run's outputs: real_model.json and the markdown table real_model.md.

Public: write_outputs(result, cfg), render_markdown(result) -> str, params_text(n) -> str,
correction_text(model_entry, *, arrow, missing) -> str.
"""
from __future__ import annotations

from pathlib import Path

from skd.core.studies.engine import write_json_atomic
from skd.core.studies.real_model import SKD_SAMPLED
from skd.core.studies.report import fmt_num, markdown_table, start_end_text


def write_outputs(result: dict, cfg) -> None:
    """real_model.json and real_model.md in cfg.output_dir (rewritten after every stage)."""
    from skd.core.checkpoint import atomic_write_text

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "real_model.json", result)
    atomic_write_text(out / "real_model.md", render_markdown(result))


def params_text(n: int | None) -> str:
    """134515008 -> '134.5M', 29312 -> '29.3k'."""
    if not n:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def correction_text(m: dict, *, arrow: str = " → ", missing: str = "—") -> str:
    """A model entry's correction rate 'start → end', for the methods whose sequences have teacher
    replacements (CONTRACT.md §7, last claim); `missing` for the others."""
    if m.get("method") not in SKD_SAMPLED:
        return missing
    return start_end_text(m.get("correction_rate_start"), m.get("correction_rate_end"), arrow=arrow, missing=missing)


def render_markdown(result: dict) -> str:
    """real_model.md: the setup in words, one table row per model, the stages of this invocation."""
    cfg, env, data, teacher = result["config"], result["env"], result["data"], result.get("teacher", {})
    student = result.get("student", {})
    n_test = data["test_examples"]
    t_sft = (f"SFT'd {cfg['teacher_steps']} steps (lr {cfg['teacher_lr']}, batch {cfg['batch_size']}) on GSM8K train"
             if cfg["teacher_steps"] else "used as is (no GSM8K SFT)")
    lines = [
        "# Real-model run: distillation on GSM8K with SmolLM2-135M-Instruct" if not cfg["quick"] and
        not cfg["teacher"] else "# Real-model run (" + ("--quick: tiny models, numbers mean nothing" if cfg["quick"]
                                                        else f"teacher {cfg['teacher']}") + ")",
        "",
        f"Teacher: {teacher.get('base', '?')}, {teacher.get('layers', '?')} layers"
        + (f", {params_text(teacher['params'])} parameters" if teacher.get("params") else "") + f", {t_sft}. "
        f"Student: layers {student.get('layers_kept')} of it ({student.get('layers')} of {student.get('of')}"
        + (f", {params_text(student['params'])} parameters" if student.get("params") else "") + "), "
        f"SFT'd {cfg['init_steps']} steps (lr {cfg['init_lr']}) on the distillation prompts' ground truth: "
        "the weak init every method starts from.",
        "",
        f"Data: `{data['dir']}`. Distillation prompts: the first {data['train_prompts']} of train.jsonl "
        f"({data['train_rows']} rows) in the seed-{cfg['seed']} order"
        + (f", skipping {data['train_skipped_long']} whose answer exceeds {cfg['max_new_tokens']} tokens"
           if cfg["fit_answers"] else ", answers cut at max_new_tokens") +
        f". Test: the first {n_test} problems of test.jsonl, greedy, at most {cfg['max_new_tokens']} new tokens.",
        "",
        f"Every method: {cfg['steps']} steps of {cfg['batch_size']} sequences, AdamW lr {cfg['lr']} with linear "
        f"decay to 0, clip 1.0, forward KL at every response position (CONTRACT.md §3-§5); SKD K = {cfg['k']} "
        f"(V = {result['vocab_size']}), gamma {cfg['gamma']}, paper sampling semantics; training compute "
        f"{cfg['dtype']} (fp32 master weights). Deviations from the paper: lr {cfg['lr']} (paper 1e-5), "
        f"batch {cfg['batch_size']} (paper 8), {cfg['steps']} steps (paper 3 epochs), a layer-pruned student.",
        "",
        f"Device {env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, "
        f"transformers {env['transformers']}, skd {env['skd']}, ops {env['ops_backend']}, {env['time']}.",
        "",
    ]
    rows = []
    for m in result["models"]:
        if m.get("status", "ok") != "ok":
            rows.append([m["name"], f"failed: {m.get('error', '?')}", "", "", "", "", ""])
            continue
        d = m.get("draft") or {}
        rows.append([m["name"], f"{fmt_num(m.get('accuracy'))} ({round(m['accuracy'] * m['test_examples'])}/"
                                f"{m['test_examples']})", fmt_num(m.get("accuracy_last_number")), correction_text(m),
                     fmt_num(d.get("acceptance_rate")), fmt_num(d.get("teacher_forwards_per_token")),
                     fmt_num(m.get("train_wall_s"), 1) + (" (resumed: the rest only)" if m.get("resumed_from") else "")])
    lines += markdown_table(["model", f"accuracy ({n_test} test problems, `####` answer)", "accuracy (last number)",
                             "correction rate start → end", "draft acceptance", "teacher passes / token",
                             "train wall s"], rows)
    lines += ["",
              "Correction rate = teacher replacements / generated tokens per step, mean of the first and last 10% of "
              "steps (methods without replacements: —; every per-step value is in real_model.json). "
              + (f"Draft = greedy speculative decoding of the first {data['spec_prompts']} test problems with the "
                 f"teacher, gamma {cfg['spec_gamma']}. " if cfg["spec"] else "Drafts not measured (--no-spec). ")
              + "`last number`: the last number of the output when it has no `####` line."]
    if result.get("timings_s"):
        lines += ["", f"Stages of this invocation (CPU s = process CPU time over all {env['threads']} threads):", ""]
        stages = [[s["stage"], "cached", "—"] if s["cached"] else [s["stage"], f"{s['wall_s']:.1f}", f"{s['cpu_s']:.1f}"]
                  for s in result["stages"]]
        stages.append(["total", f"{result['timings_s']['total']:.1f}", f"{result['cpu_s']['total']:.1f}"])
        lines += markdown_table(["stage", "wall s", "CPU s"], stages)
    return "\n".join(lines) + "\n"

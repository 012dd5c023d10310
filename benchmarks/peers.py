"""`skd bench peers`: skd against the tools users would otherwise run, on one teacher/student pair and the
same prompts, in one run.

Public: PeersConfig, QUICK, SECTIONS, SAMPLER_ROWS, PEER_ROWS, run(cfg, *, on_event=None) -> dict,
all_ratios(result) -> dict, plot(result, path) -> str | None.

Three sections, each with its variants' repeats interleaved and medians reported:
  distill  one on-policy distillation step: TRL's DistillationTrainer against `skd distill --method
           on-policy` and `--method skd` (--gamma auto, auto with measured teacher prices, and 5):
           seconds per step, response tokens/s, the acceptance rate and mean draft length of the SKD
           rows, and each SKD row's floor (skd.benchmarks.peer_steps);
  draft    greedy decoding with a draft: transformers' assisted generation (B = 1) against
           speculative_generate at B = 1 and batched, and the teacher alone at both sizes; tokens/s and
           whether every output equals the teacher's greedy output (skd.benchmarks.peer_decoding). Drafts:
           the pair's student, and the same distilled by skd (cached; cfg.draft_recipe, see
           skd.benchmarks.peer_pair), or with --draft a trained draft the user names instead; with
           --draft-int8 also an int8 copy of each (skd.core.int8_draft);
  sampler  the authors' per-prompt SKD procedure against the batched SKD sampler, as `skd bench sampling`
           (skd.benchmarks.sampling.compare).
The pair (skd.benchmarks.peer_pair): SmolLM2-135M-Instruct and a copy pruned to 8 of its 30 layers;
--quick: the tiny presets. Prompts: GSM8K-style problems made in code (skd.benchmarks.peer_prompts),
rendered through the gsm8k task's template and the chat template, the same token ids on every side.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import time
from dataclasses import dataclass
from typing import Callable

from skd.core.errors import SkdError

SECTIONS = ("distill", "draft", "sampler")


@dataclass(frozen=True)
class PeersConfig:
    quick: bool = False            # tiny presets, few prompts / tokens / repeats: proves the path, numbers mean nothing
    teacher: str | None = None     # a model folder or preset; None: SmolLM2-135M-Instruct (--quick: tiny-teacher)
    student: str | None = None     # None: the teacher pruned to student_layers layers (--quick: tiny-student)
    student_layers: int = 8        # of SmolLM2's 30 (evenly spread, first and last kept)
    draft: str | None = None       # the draft rows' trained draft (a model folder); None: the cached skd-distilled one
    run_dir: str = "runs/peers"    # the pruned student and the distilled draft are cached here
    prompts: int = 16              # measurement prompts (the distillation steps cycle through them)
    train_batch_size: int = 4      # sequences per distillation step (both trainers)
    batch_size: int = 8            # the batched rows of the draft and sampler sections
    max_new_tokens: int = 64
    temperature: float = 1.0       # sampling temperature of the distillation steps and the sampler section
    k: int = 25                    # SKD top-K (paper)
    lr: float = 1e-5               # the timed distillation steps (paper)
    repeats: int = 3               # timed repeats per row, interleaved, after one warm-up
    floor_targets: tuple[float, ...] = (1.2, 1.5)   # SKD step / TRL's step values the distill floor is solved for
    draft_gamma: str | int = "auto"   # speculative_generate's draft length in the draft rows
    draft_prices: str = "weights"  # what gamma auto prices a teacher pass at (peer_pair.DRAFT_PRICES)
    sampler_gamma: int = 5         # the sampler section (the released code's fixed draft length)
    batch1_prompts: int | None = None   # the sampler's one-prompt-at-a-time rows: the first N prompts (None: all)
    draft_recipe: str = "teacher-greedy"   # how skd distils the draft (skd.benchmarks.peer_pair.DRAFT_RECIPES)
    distill_steps: int = 150       # the distilled draft's training steps
    distill_lr: float = 2e-4
    distill_batch_size: int = 8
    distill_prompts: int = 384     # its training prompts (none of them is a measurement prompt)
    draft_int8: bool = False       # also measure an int8 copy of each draft (skd.core.int8_draft)
    sections: tuple[str, ...] = SECTIONS
    trl: bool = True               # False: skip the TRL row even when trl is installed
    trl_trainer: str = "auto"      # auto: DistillationTrainer, else GKDTrainer (lmbda 1); or name one of them
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 20

    def __post_init__(self):
        object.__setattr__(self, "sections", tuple(self.sections))
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise SkdError(f"unknown or no sections {', '.join(map(repr, bad))}",
                           f"pass --sections with some of: {', '.join(SECTIONS)}")
        for name in ("student_layers", "prompts", "train_batch_size", "max_new_tokens", "repeats", "distill_steps",
                     "distill_batch_size", "distill_prompts", "sampler_gamma"):
            if int(getattr(self, name)) < 1:
                raise SkdError(f"{name} must be >= 1 (got {getattr(self, name)})",
                               f"pass --{name.replace('_', '-')} 1 or more")
        if self.batch1_prompts is not None and int(self.batch1_prompts) < 1:
            raise SkdError(f"batch1_prompts must be >= 1 (got {self.batch1_prompts})", "pass --batch1-prompts 1 or more")
        if self.batch_size < 2:
            raise SkdError(f"batch_size must be >= 2 (got {self.batch_size}): the batched rows need a batch",
                           "pass --batch-size 2 or more")
        if not self.temperature > 0:
            raise SkdError(f"temperature must be > 0 (got {self.temperature}): the distillation steps sample",
                           "pass --temperature 1 (the comparison's setting) or another positive value")
        if self.draft_gamma != "auto" and not (isinstance(self.draft_gamma, int) and self.draft_gamma >= 1):
            raise SkdError(f"draft gamma must be auto or >= 1 (got {self.draft_gamma!r})",
                           "pass --draft-gamma auto or 4")
        from skd.benchmarks.peer_pair import DRAFT_PRICES, DRAFT_RECIPES

        if self.draft_recipe not in DRAFT_RECIPES:
            raise SkdError(f"unknown draft recipe {self.draft_recipe!r}",
                           f"pass --draft-recipe {' or '.join(DRAFT_RECIPES)}")
        if self.draft_prices not in DRAFT_PRICES:
            raise SkdError(f"unknown draft prices {self.draft_prices!r}",
                           f"pass --draft-prices {' or '.join(DRAFT_PRICES)}")
        if self.trl_trainer not in ("auto", "distillation", "gkd"):
            raise SkdError(f"unknown TRL trainer {self.trl_trainer!r}", "pass --trl-trainer auto, distillation or gkd")
        if self.dtype not in ("float32", "bfloat16"):
            raise SkdError(f"unknown dtype {self.dtype!r}", "use float32 or bfloat16")


# `--quick`: the tiny presets, a few prompts, tokens and repeats (seconds on one thread).
# Explicit options still override these.
QUICK = dict(prompts=3, train_batch_size=2, batch_size=2, max_new_tokens=8, repeats=2, distill_steps=2,
             distill_lr=1e-3, distill_batch_size=2, distill_prompts=4)


SAMPLER_ROWS = {
    "skd_batched": "skd sample(mode skd), batches of --batch-size: ragged rows, two KV caches",
    "released_loop": "the authors' procedure, one prompt at a time: student generate() drafts gamma tokens, "
                     "one teacher forward verifies, caches cropped (skd.benchmarks.released_loop)",
    "skd_batch1": "skd sample(mode skd), one prompt at a time",
    "student_only": "skd sample(mode student), batches of --batch-size: on-policy sampling, the cost floor",
    "skd_batched_auto": "skd sample(mode skd, gamma auto: skd's default draft length; the same token law as "
                        "a fixed gamma), batches of --batch-size",
}


def _prompts(cfg, tok):
    """(measurement prompts as (text, ids, response ids), training examples for the draft) via the gsm8k template."""
    from skd.benchmarks.peer_prompts import problems
    from skd.benchmarks.peer_steps import prompt_ids
    from skd.core.data import TokenizedExample
    from skd.core.tasks import get_task

    task = get_task("gsm8k")
    bench = problems(cfg.prompts, seed=cfg.seed)
    train = problems(cfg.distill_prompts, seed=cfg.seed + 1, exclude=bench)

    def encode(ex):
        text = task.user_prompt(ex)
        return text, prompt_ids(tok, text), tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    measured = [encode(ex) for ex in bench]
    return measured, [TokenizedExample(p, r) for _, p, r in map(encode, train)]


def _given_draft(name: str, tok):
    """The --draft folder, checked to share the pair's tokenizer (a draft's tokens are the teacher's tokens)."""
    from skd.benchmarks.peer_pair import model_folder
    from skd.core import models as model_lib

    folder = model_folder(name)
    if model_lib.load_tokenizer(str(folder)).get_vocab() != tok.get_vocab():
        raise SkdError(f"draft {name} uses a different tokenizer from the teacher's",
                       "pass a draft of the teacher's family (e.g. a student skd distilled from it)")
    return folder


def run(cfg: PeersConfig, *, on_event: Callable[[str, dict], None] | None = None) -> dict:
    """All sections of cfg.sections on one pair; the result dict (JSON-ready)."""
    import torch

    from skd.benchmarks import peer_decoding, peer_steps
    from skd.benchmarks.peer_pair import SCHEMA, distilled_draft, resolve_pair
    from skd.core import models as model_lib
    from skd.core.environment import env_info

    emit = on_event or (lambda kind, payload: None)
    start = time.perf_counter()
    dev = torch.device(cfg.device)
    pair = resolve_pair(cfg)
    tok = model_lib.load_tokenizer(str(pair.student))
    if model_lib.load_tokenizer(str(pair.teacher)).get_vocab() != tok.get_vocab():
        raise SkdError(f"teacher {pair.teacher_label} and student {pair.student_label} use different tokenizers",
                       "pass a student of the teacher's family (the default prunes the teacher)")
    measured, train_examples = _prompts(cfg, tok)
    env = {**env_info(dev), "trl": peer_steps.trl_version()}
    result = {"bench": "peers", "schema": SCHEMA, "env": env, "config": dataclasses.asdict(cfg),
              "pair": {"teacher": pair.teacher_label, "student": pair.student_label, "teacher_dir": str(pair.teacher),
                       "student_dir": str(pair.student), "vocab_size": len(tok)},
              "prompts": {"count": len(measured), "source": "skd.benchmarks.peer_prompts (GSM8K-style, in code)",
                          "template": "gsm8k task template, one user turn through the chat template",
                          "mean_prompt_tokens": sum(len(p) for _, p, _ in measured) / len(measured),
                          "texts": [t for t, _, _ in measured]},
              "sections": {}}
    V = len(tok)

    if "distill" in cfg.sections:
        emit("section", {"name": "distill", "what": "one distillation step: TRL vs skd on-policy vs skd skd"})
        t0 = time.perf_counter()
        result["sections"]["distill"] = peer_steps.run(pair, measured, cfg)
        result["sections"]["distill"]["wall_s"] = time.perf_counter() - t0
        gc.collect()

    if "draft" in cfg.sections:
        t0 = time.perf_counter()
        if cfg.draft is None:
            emit("section", {"name": "draft", "what": f"skd-distilled draft, recipe {cfg.draft_recipe} (cached stages)"})
            stage = distilled_draft(cfg, pair, train_examples, emit=emit)
            trained, trained_dir = "skd-distilled", stage["checkpoint"]
        else:
            trained_dir = str(_given_draft(cfg.draft, tok))
            trained, stage = "given", None
        emit("section", {"name": "draft", "what": "greedy decoding: assisted generation vs speculative_generate"})
        teacher = model_lib.freeze(model_lib.load_model(str(pair.teacher), dtype=cfg.dtype, device=cfg.device))
        drafts = {"pruned" if pair.student_stamp else "student":
                  model_lib.freeze(model_lib.load_model(str(pair.student), dtype=cfg.dtype, device=cfg.device)),
                  trained: model_lib.freeze(model_lib.load_model(trained_dir, dtype=cfg.dtype, device=cfg.device))}
        if cfg.draft_int8:
            from skd.core.int8_draft import quantize_draft

            for name in list(drafts):
                d = copy.deepcopy(drafts[name])
                quantize_draft(d)
                drafts[f"{name}+int8"] = d
        sec = peer_decoding.run(teacher, drafts, tok, [p for _, p, _ in measured], batch_size=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, gamma=cfg.draft_gamma, repeats=cfg.repeats,
                                prices=cfg.draft_prices)
        if stage is not None:
            sec["distilled_draft"] = {k: stage.get(k) for k in ("checkpoint", "cached", "steps", "final_loss",
                                                                "correction_rate_start", "correction_rate_end",
                                                                "train_wall_s")}
            sec["distilled_draft"].update(recipe=stage["recipe"], lr=cfg.distill_lr, batch_size=cfg.distill_batch_size,
                                          prompts=len(train_examples), responses=stage.get("responses"))
        else:
            sec["given_draft"] = {"path": trained_dir}
        result["sections"]["draft"] = sec
        sec["wall_s"] = time.perf_counter() - t0   # with the draft's training when it was not cached
        del teacher, drafts
        gc.collect()

    if "sampler" in cfg.sections:
        from skd.benchmarks.sampling import compare

        emit("section", {"name": "sampler", "what": "the authors' per-prompt SKD loop vs the batched SKD sampler"})
        t0 = time.perf_counter()
        teacher = model_lib.freeze(model_lib.load_model(str(pair.teacher), dtype=cfg.dtype, device=cfg.device))
        student = model_lib.freeze(model_lib.load_model(str(pair.student), dtype=cfg.dtype, device=cfg.device))
        settings = dict(student_temperature=cfg.temperature, student_top_p=1.0, teacher_temperature=cfg.temperature,
                        teacher_top_p=1.0)
        results, ratios = compare(teacher, student, tok, [p for _, p, _ in measured], batch_size=cfg.batch_size,
                                  k=cfg.k, gamma=cfg.sampler_gamma, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                  batch1_prompts=cfg.batch1_prompts, repeats=cfg.repeats, settings=settings)
        for name, what in SAMPLER_ROWS.items():
            if name in results:
                results[name]["measures"] = what
        result["sections"]["sampler"] = {"results": results, "ratios": ratios,
                                         "settings": {"k": cfg.k, "gamma": cfg.sampler_gamma, "vocab_size": V,
                                                      "max_new_tokens": cfg.max_new_tokens, "stop": "EOS only",
                                                      **settings},
                                         "wall_s": time.perf_counter() - t0}
        del teacher, student
        gc.collect()

    result["wall_s"] = time.perf_counter() - start
    return result


PEER_ROWS = ("trl_", "teacher_hf_", "hf_assisted_", "released_loop")   # rows measuring the other tools


def all_ratios(result: dict) -> dict:
    """Every ratio of every section, as {"section.name": value}."""
    return {f"{s}.{k}": v for s, sec in result["sections"].items() for k, v in sec.get("ratios", {}).items()}


def plot(result: dict, path: str) -> str | None:
    """Tokens/s per row of each section, side by side (horizontal bars; the peers' rows in orange)."""
    from skd.core.studies.report import save_plot

    secs = [s for s in SECTIONS if s in result["sections"]]

    def draw(plt):
        fig, axes = plt.subplots(1, len(secs), figsize=(5.5 * len(secs), 4.2), squeeze=False)
        titles = {"distill": "distillation step: response tokens/s", "draft": "greedy decoding: tokens/s",
                  "sampler": "SKD sampling: tokens/s"}
        for ax, s in zip(axes[0], secs):
            rows = result["sections"][s]["results"]
            names = list(rows)
            colors = ["#dd8452" if n.startswith(PEER_ROWS) else "#4c72b0" for n in names]
            ax.barh(range(len(names)), [rows[n]["tokens_per_s"] for n in names], color=colors)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names, fontsize=7)
            ax.invert_yaxis()
            ax.set(title=titles[s], xlabel="tokens / s (median of the repeats); orange: the peers")
        env = result["env"]
        fig.suptitle(f"skd bench peers · {result['pair']['teacher']} · {env['device_name']} · "
                     f"{env['threads']} threads",
                     fontsize=9)
        fig.tight_layout()
        return fig
    return save_plot(path, draw)

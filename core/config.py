"""Run configuration: small frozen dataclasses, validated on creation, saved as JSON per run.

Public: SampleConfig, ModelConfig, DataConfig, TrainConfig, RunConfig, ConfigValueError, METHODS,
CE_METHODS, MEASURE_PRICES, DIVERGENCE_NAMES, DTYPES, LOSS_NORMS, SEMANTICS, SPECKD_VERIFICATIONS, SWITCH_DIVERGENCES,
REPORT_TO, FLAT_KEYS, run_config_to_dict(cfg), resolve_dtype(dtype, device_type).

Defaults follow the paper's setup (Xu et al., ICLR 2025, section 4 / appendix; CONTRACT.md §2-§5);
each default carries its reason on its line. __post_init__ is the one place values are range-checked
(the command line and --config files reach it alike). Distinct knobs get distinct names
(`student_temperature` for drafting vs `loss_temperature` for the divergence, default 1).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from skd.core.errors import SkdError

# Training-sequence source per method (CONTRACT.md §4).
METHODS = (
    "skd",         # interleaved: student proposes, teacher replaces tokens outside its top-K
    "supervised",  # supervised KD: ground-truth responses
    "on-policy",   # on-policy KD: student samples
    "imitkd",      # ground truth or student sample, 50/50 per prompt ("mixed" in the released code)
    "two-stage",   # ground truth for the first half of the steps, then student samples ("mixed_train")
    "mixed-skd",   # ground truth or SKD sequence, 50/50 per prompt
    "speckd",      # SpecKD: student samples; the loss only on tokens the teacher's top-K test accepts
    "adaswitch",   # AdaSwitch: the student writes until its divergence from the teacher jumps, then the teacher
    "gkd",         # student sample with probability lambda (per batch), else ground truth; generalised JSD
    "seqkd",       # cross-entropy on teacher-generated responses (the data's response field)
    "sft",         # cross-entropy on ground-truth responses
)
# Methods trained with cross-entropy on their sequences: no teacher logits, no divergence (the same
# tuple as skd.core.objective.CE_METHODS, which the loss dispatches on; a test keeps them equal).
CE_METHODS = ("sft", "seqkd")
# --teacher-prices measure: training measures the teacher's price per pass width before its first step
# (skd.core.forward_prices) instead of taking given numbers or the weight-byte ratio.
MEASURE_PRICES = "measure"
# skd.core.losses.DIVERGENCES has the same names. "jsd" is GKD's / TRL's generalised JSD,
# "jsd-normalized" the same divided by beta (1 - beta).
DIVERGENCE_NAMES = ("fkl", "rkl", "jsd", "jsd-normalized", "tvd", "skew-fkl", "skew-rkl")
GKD_DIVERGENCES = ("jsd", "jsd-normalized")  # gkd IS the generalised-JSD method
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
LOSS_NORMS = ("sequence", "token")
SEMANTICS = ("paper", "code")
SAMPLE_MODES = ("skd", "student", "teacher", "adaswitch")
SPECKD_VERIFICATIONS = ("sampled", "greedy")   # which student proposal the top-K test judges (SpecKD)
SWITCH_DIVERGENCES = ("fkl", "rkl", "tvd", "jsd")   # AdaSwitch's switch test (jsd at beta 0.5)
REPORT_TO = ("none", "tensorboard", "wandb")   # where the scalars of metrics.jsonl also go (skd.core.reporting)


class ConfigValueError(SkdError):
    """An impossible config value; `fields` names the dataclass fields the check involved."""

    def __init__(self, problem: str, fix: str | None, fields: tuple[str, ...]):
        super().__init__(problem, fix)
        self.fields = fields


def _check(cond: bool, problem: str, fix: str, *fields: str) -> None:
    if not cond:
        raise ConfigValueError(problem, fix, fields)


@dataclass(frozen=True)
class SampleConfig:
    """How training (or evaluation) sequences are sampled. Temperature 0 means greedy."""

    mode: str = "skd"                  # skd | student | teacher (set per method by the training loop)
    k: int = 25                        # top-K of the teacher that a student token must fall in (paper default)
    gamma: int | str = "auto"          # student draft length per round: "auto" (adaptive, rules.adaptive_gamma)
                                       # or a fixed N (the released code: 5)
    gamma_max: int = 8                 # the longest draft "auto" may choose
    teacher_prices: tuple[float, ...] | str | None = None  # "auto"'s price of a teacher pass over w positions
                                       # (entry w - 1) in one-position student forwards; "measure": measured
                                       # by training before its first step (skd.core.forward_prices) and kept
                                       # in the checkpoints; None: the teacher / student weight-byte ratio
    teacher_led: bool = True           # "auto" may let the teacher write ahead and test the student's proposals
                                       # after it, where that costs less (rules.plan_round; same token law)
    staged_verify: bool = True         # a verification may score the first drafted position of every row, then
                                       # the rest for the rows that kept it, where that costs less
                                       # (rules.staging_pays; same logits at every tested position)
    semantics: str = "paper"           # paper | code (CONTRACT.md §2)
    keep_bonus: bool = False           # released code discards the teacher's bonus token on full acceptance
    student_temperature: float = 0.5   # paper config for student proposals
    student_top_p: float = 0.5         # paper config for student proposals
    teacher_temperature: float = 0.2   # paper config for teacher replacements
    teacher_top_p: float = 0.5         # paper config for teacher replacements
    teacher_top_k: int = 50            # only used by semantics="code" (HF default top-k 50 in the released code)
    max_new_tokens: int = 256          # response budget per prompt
    stop_strings: tuple[str, ...] = () # stop strings added to the task's (task_stops) or replacing them; EOS
                                       # comes from the models' config
    task_stops: bool = True            # the task's own stop strings too (False: stop_strings alone)
    keep_teacher_logits: bool = True   # return the verification logits so the loss needs no second teacher pass
    speckd_verification: str = "sampled"  # speckd: the top-K test judges the sampled token (or the student's argmax)
    switch_threshold: float = 3.0      # adaswitch: switch when d_i >= threshold x mean of the window's d (inf: never)
    switch_window: int = 8             # adaswitch: positions in the running mean of the divergence
    switch_divergence: str = "fkl"     # adaswitch: divergence of the switch test, on the raw logits
    target_topk: int | None = None     # teacher targets as top-N log-probs + tail (SparseTeacher); None: dense
    target_temperature: float = 1.0    # ... at this loss temperature; both set by the training loop from train.*

    @property
    def max_draft(self) -> int:
        """The longest draft a round can have: gamma, or gamma_max under --gamma auto."""
        return self.gamma_max if self.gamma == "auto" else self.gamma

    def __post_init__(self):
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if isinstance(self.gamma, str) and self.gamma.strip().isdigit():   # "5" from a config file
            object.__setattr__(self, "gamma", int(self.gamma))
        _check(self.mode in SAMPLE_MODES, f"unknown sampling mode {self.mode!r}",
               f"use one of: {', '.join(SAMPLE_MODES)}", "mode")
        _check(self.semantics in SEMANTICS, f"unknown SKD semantics {self.semantics!r}",
               "use --semantics paper (default) or code", "semantics")
        _check(isinstance(self.k, int) and self.k >= 0, f"k must be >= 0 (got {self.k})",
               "pass --k 0 (always take the teacher) up to the vocabulary size (always take the student)", "k")
        _check(self.gamma == "auto" or (isinstance(self.gamma, int) and not isinstance(self.gamma, bool)
                                        and self.gamma >= 1),
               f"gamma must be auto or >= 1 (got {self.gamma})",
               "pass --gamma auto (adaptive draft length) or a fixed --gamma 1 or more (the paper uses 5)", "gamma")
        if isinstance(self.teacher_prices, str) and self.teacher_prices.strip().lower() == MEASURE_PRICES:
            object.__setattr__(self, "teacher_prices", MEASURE_PRICES)   # measured once at the start of training
        elif self.teacher_prices is not None:   # "1.4,1.9,2.1" (command line, repeatable) or a list (config file)
            items = [self.teacher_prices] if isinstance(self.teacher_prices, str) else list(self.teacher_prices)
            parts = [p for x in items for p in (x.split(",") if isinstance(x, str) else [x])]
            try:
                object.__setattr__(self, "teacher_prices", tuple(float(x) for x in parts))
            except (TypeError, ValueError):
                raise ConfigValueError(f"teacher_prices must be comma-separated numbers (got {self.teacher_prices!r})",
                                       "e.g. --teacher-prices 1.4,1.9,2.1, or --teacher-prices measure",
                                       ("teacher_prices",)) from None
            _check(len(self.teacher_prices) > 0 and all(math.isfinite(x) and x > 0 for x in self.teacher_prices),
                   f"teacher_prices must be positive numbers (got {self.teacher_prices})",
                   "give one price per teacher pass width, in student forwards, or measure, or leave it unset",
                   "teacher_prices")
        _check(isinstance(self.gamma_max, int) and self.gamma_max >= 1, f"gamma_max must be >= 1 (got {self.gamma_max})",
               "pass --gamma-max 1 or more", "gamma_max")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1 (got {self.max_new_tokens})",
               "pass --max-new-tokens 1 or more", "max_new_tokens")
        for name in ("student_temperature", "teacher_temperature"):
            t = getattr(self, name)
            _check(math.isfinite(t) and t >= 0, f"{name} must be >= 0 (got {t})",
                   f"pass --{name.replace('_', '-')} 0 for greedy or a positive temperature", name)
        for name in ("student_top_p", "teacher_top_p"):
            p = getattr(self, name)
            _check(0 < p <= 1, f"{name} must be in (0, 1] (got {p})", f"pass --{name.replace('_', '-')} in (0, 1]",
                   name)
        _check(self.teacher_top_k >= 0, f"teacher_top_k must be >= 0 (got {self.teacher_top_k})",
               "pass 0 to disable top-k filtering", "teacher_top_k")
        _check(self.speckd_verification in SPECKD_VERIFICATIONS,
               f"unknown SpecKD verification {self.speckd_verification!r}",
               "use --speckd-verification sampled (the token the student wrote) or greedy (its argmax)",
               "speckd_verification")
        _check(not math.isnan(self.switch_threshold) and self.switch_threshold >= 0,
               f"switch threshold must be >= 0 (got {self.switch_threshold})",
               "pass --switch-threshold 0 (the teacher from the second token) up to inf (never switch)",
               "switch_threshold")
        _check(isinstance(self.switch_window, int) and self.switch_window >= 1,
               f"switch window must be >= 1 (got {self.switch_window})", "pass --switch-window 1 or more",
               "switch_window")
        _check(self.switch_divergence in SWITCH_DIVERGENCES, f"unknown switch divergence {self.switch_divergence!r}",
               f"use one of: {', '.join(SWITCH_DIVERGENCES)}", "switch_divergence")
        _check(self.target_topk is None or self.target_topk >= 1, f"target_topk must be >= 1 (got {self.target_topk})",
               "pass 1 or more, or None for dense teacher logits", "target_topk")
        _check(math.isfinite(self.target_temperature) and self.target_temperature > 0,
               f"target_temperature must be a finite number > 0 (got {self.target_temperature})",
               "pass the loss temperature (1: plain)", "target_temperature")


@dataclass(frozen=True)
class ModelConfig:
    teacher: str | None = "tiny-teacher"  # alias, hub id or local folder; unused by sft/seqkd
    student: str = "tiny-student"
    dtype: str = "auto"                    # auto: bf16 on CUDA, fp32 on CPU (resolve_dtype); the compute dtype
    teacher_dtype: str | None = None       # the teacher's weights dtype (None: --dtype), e.g. bf16 beside an fp32 student
    teacher_device: str = "auto"           # auto: cuda if available, else cpu
    student_device: str = "auto"
    trust_remote_code: bool = False        # never run hub code unless asked

    def __post_init__(self):
        _check(self.dtype in DTYPES, f"unknown dtype {self.dtype!r}", f"use one of: {', '.join(DTYPES)}", "dtype")
        _check(self.teacher_dtype is None or self.teacher_dtype in DTYPES, f"unknown teacher dtype {self.teacher_dtype!r}",
               f"use one of: {', '.join(DTYPES)}", "teacher_dtype")


def resolve_dtype(dtype: str, device_type: str) -> str:
    """The weights dtype to load: "auto" is bfloat16 on a CUDA device and float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device_type == "cuda" else "float32"


@dataclass(frozen=True)
class DataConfig:
    task: str = "arith"
    data: str | None = None            # local JSON/JSONL/CSV file instead of the hub
    fields: str | None = None          # "prompt=question,answer=answer" overrides
    limit: int | None = 1000           # the paper's "1k" regime (100 is the other one)
    val_data: str | None = None
    val_limit: int | None = 64         # validation responses scored every eval_every steps
    seed: int = 20                     # paper seed; orders the data and picks the `limit` subset

    def __post_init__(self):
        _check(self.limit is None or self.limit > 0, f"--limit must be > 0 (got {self.limit})",
               "pass a positive number of examples, e.g. --limit 1000 (the paper uses 1000 and 100)", "limit")
        _check(self.val_limit is None or self.val_limit >= 0, f"--val-limit must be >= 0 (got {self.val_limit})",
               "pass 0 to skip validation", "val_limit")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "skd"
    divergence: str | None = None      # None: the method's own -- jsd for gkd, else fkl ("kl" in the
                                       # released config: KL(p_T || q_S)); resolved on creation
    beta: float = 0.5                  # generalised JSD interpolation (jsd, jsd-normalized; gkd)
    alpha: float = 0.1                 # DistiLLM skew (skew-fkl / skew-rkl)
    teacher_topk: int | None = None    # None: dense teacher logits; N: its top-N log-probs + one tail bucket
    loss_temperature: float = 1.0      # divergence on logits / T, times T^2 (Hinton et al. 2015); 1: plain
    gkd_lambda: float = 0.5            # gkd: probability of a student-sampled batch
    loss_norm: str = "sequence"        # sequence: per-sequence token mean, then mean (released code); token
    lr: float = 1e-5                   # paper: AdamW 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6             # paper setting (not torch's 1e-8)
    weight_decay: float = 0.0
    warmup_steps: int = 0              # paper: linear decay to 0, no warm-up
    grad_clip: float = 1.0
    epochs: float = 3.0                # paper: 3 epochs (10 for translation)
    max_steps: int | None = None       # overrides epochs when set
    batch_size: int = 8                # sequences per optimizer step (paper)
    micro_batch_size: int | None = None  # gradient accumulation: batch_size / micro_batch_size passes
    group_by_length: bool = False      # batches of similar-length examples (less padding, faster steps)
    deterministic: bool = False        # deterministic kernels (GPU: bit-identical resume; CPU: already so)
    eval_every: int = 25               # paper: validation loss every 25 steps, with a checkpoint
    save_every: int = 25
    keep_checkpoints: int = 2          # rolling step checkpoints kept besides `final`
    seed: int = 20                     # paper seed
    output_dir: str = "runs/skd"
    overwrite: bool = False
    resume: bool = False               # continue from the latest complete checkpoint in output_dir
    fsdp: bool = False                 # multi-process: shard the student (FSDP) instead of replicating it (DDP)
    sample_chunk: int | None = None    # rows sampled with one seeded generator pair (None: the per-process
                                       # batch); equal values give equal runs at any process count
    rejected_weight: float = 0.0       # speckd: loss weight of a token the teacher's test rejected (0: masked out)
    lora_r: int = 0                    # LoRA rank of the student's adapters (0: train every weight)
    lora_alpha: float = 16.0           # LoRA scale alpha (the update is alpha / r * B A); peft's examples use 16
    lora_dropout: float = 0.0          # dropout on the adapters' input during the training forward
    lora_target_modules: tuple[str, ...] = ()  # module names to adapt (empty: attention + MLP projections)
    report_to: str = "none"            # also send metrics.jsonl's scalars to tensorboard / wandb (optional extras)
    gradient_checkpointing: bool = False  # recompute the student's activations in backward: less memory, same
                                          # loss and gradients; sampling keeps its KV cache (it runs in eval mode)

    def __post_init__(self):
        _check(self.method in METHODS, f"unknown method {self.method!r}", f"use one of: {', '.join(METHODS)}",
               "method")
        if self.divergence is None:
            object.__setattr__(self, "divergence", "jsd" if self.method == "gkd" else "fkl")
        _check(self.divergence in DIVERGENCE_NAMES, f"unknown divergence {self.divergence!r}",
               f"use one of: {', '.join(DIVERGENCE_NAMES)}", "divergence")
        _check(self.method != "gkd" or self.divergence in GKD_DIVERGENCES,
               f"--method gkd trains with the generalised JSD, not {self.divergence}",
               "leave --divergence out (jsd with --beta) or pass jsd-normalized; other divergences go with "
               "the other methods", "method", "divergence")
        _check(0.0 <= self.beta <= 1.0, f"beta must be in [0, 1] (got {self.beta})",
               "0 gives forward KL, 1 reverse KL", "beta")
        _check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1] (got {self.alpha})", "DistiLLM uses 0.1", "alpha")
        n = self.teacher_topk
        _check(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1),
               f"teacher_topk must be >= 1 (got {n})",
               "pass --teacher-topk 1 or more (e.g. 64), or leave it out for the dense teacher", "teacher_topk")
        _check(n is None or self.method not in CE_METHODS,
               f"--teacher-topk has no teacher logits to thin out with --method {self.method} (cross-entropy)",
               "leave --teacher-topk out, or use a distillation method", "teacher_topk", "method")
        t = self.loss_temperature
        _check(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0,
               f"loss_temperature must be a finite number > 0 (got {t})",
               "pass --loss-temperature 1 (the plain divergence) or e.g. 2", "loss_temperature")
        _check(t == 1 or self.method not in CE_METHODS,
               f"--loss-temperature has no teacher distribution to soften with --method {self.method} "
               "(cross-entropy)", "leave --loss-temperature out, or use a distillation method",
               "loss_temperature", "method")
        _check(0.0 <= self.gkd_lambda <= 1.0, f"gkd lambda must be in [0, 1] (got {self.gkd_lambda})",
               "pass --gkd-lambda between 0 (ground truth only) and 1 (student samples only)", "gkd_lambda")
        _check(self.loss_norm in LOSS_NORMS, f"unknown loss norm {self.loss_norm!r}",
               "use --loss-norm sequence (paper) or token", "loss_norm")
        _check(self.lr > 0, f"learning rate must be > 0 (got {self.lr})", "pass e.g. --lr 1e-5", "lr")
        for name in ("adam_beta1", "adam_beta2"):
            b = getattr(self, name)
            _check(0.0 <= b < 1.0, f"{name} must be in [0, 1) (got {b})",
                   f"pass --{name.replace('_', '-')} in [0, 1) (torch's AdamW: 0.9 and 0.999)", name)
        _check(self.adam_eps >= 0, f"adam_eps must be >= 0 (got {self.adam_eps})", "pass e.g. --adam-eps 1e-6",
               "adam_eps")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})",
               "pass 0 (paper) or a positive decay", "weight_decay")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {self.warmup_steps})",
               "pass 0 for no warm-up (paper)", "warmup_steps")
        _check(self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})", "pass --batch-size 8",
               "batch_size")
        mb = self.micro_batch_size
        _check(mb is None or (1 <= mb <= self.batch_size and self.batch_size % mb == 0),
               f"micro batch size {mb} must divide the batch size {self.batch_size}",
               "pass a --micro-batch-size that divides --batch-size", "micro_batch_size", "batch_size")
        _check(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 (got {self.max_steps})",
               "pass --max-steps 1 or more, or use --epochs", "max_steps")
        _check(self.epochs > 0, f"epochs must be > 0 (got {self.epochs})", "pass --epochs 3 (paper)", "epochs")
        _check(self.grad_clip >= 0, f"grad_clip must be >= 0 (got {self.grad_clip})", "0 disables clipping",
               "grad_clip")
        _check(self.eval_every >= 0 and self.save_every >= 0, "eval_every / save_every must be >= 0",
               "0 disables them", "eval_every", "save_every")
        _check(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other",
               "pass --resume to continue the run in --output-dir, or --overwrite to start it over",
               "resume", "overwrite")
        sc = self.sample_chunk
        _check(sc is None or (1 <= sc <= self.batch_size and self.batch_size % sc == 0),
               f"sample chunk {sc} must divide the batch size {self.batch_size}",
               "pass a --sample-chunk that divides the per-process batch (--batch-size / processes)",
               "sample_chunk", "batch_size")
        _check(0.0 <= self.rejected_weight <= 1.0, f"rejected weight must be in [0, 1] (got {self.rejected_weight})",
               "pass --rejected-weight 0 (mask rejected tokens out, SpecKD) up to 1 (on-policy KD)", "rejected_weight")
        _check(self.rejected_weight == 0.0 or self.method == "speckd",
               f"--rejected-weight is a SpecKD setting; --method {self.method} has no rejected tokens",
               "drop --rejected-weight, or pass --method speckd", "rejected_weight", "method")
        _check(isinstance(self.lora_r, int) and self.lora_r >= 0, f"LoRA rank must be >= 0 (got {self.lora_r})",
               "pass --lora-r 8 (or 0 to train every weight)", "lora_r")
        _check(math.isfinite(self.lora_alpha) and self.lora_alpha > 0, f"LoRA alpha must be > 0 (got {self.lora_alpha})",
               "pass e.g. --lora-alpha 16", "lora_alpha")
        _check(0.0 <= self.lora_dropout < 1.0, f"LoRA dropout must be in [0, 1) (got {self.lora_dropout})",
               "pass e.g. --lora-dropout 0.05", "lora_dropout")
        object.__setattr__(self, "lora_target_modules",   # repeatable and/or comma-separated
                           tuple(n.strip() for item in self.lora_target_modules for n in item.split(",") if n.strip()))
        lora_default = TrainConfig.__dataclass_fields__
        _check(self.lora_r > 0 or all(getattr(self, n) == lora_default[n].default for n in
                                      ("lora_alpha", "lora_dropout", "lora_target_modules")),
               "--lora-alpha / --lora-dropout / --lora-target-modules need --lora-r", "pass --lora-r 8 (a LoRA rank)",
               "lora_r")
        _check(not (self.lora_r > 0 and self.fsdp), "--lora-r with --fsdp is not supported",
               "drop --fsdp: the adapters are small, plain data parallelism (DDP) replicates them", "lora_r", "fsdp")
        _check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1 (got {self.keep_checkpoints})",
               "pass --keep-checkpoints 1 or more (--save-every 0 turns step checkpoints off)", "keep_checkpoints")
        _check(self.report_to in REPORT_TO, f"unknown --report-to {self.report_to!r}",
               f"use one of: {', '.join(REPORT_TO)}", "report_to")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self):
        # Settings that only one method reads are refused with the others (a silent no-op hides a typo).
        method, sc, default = self.train.method, self.sample, SampleConfig()
        _check(method == "speckd" or sc.speckd_verification == default.speckd_verification,
               f"--speckd-verification is a SpecKD setting; --method {method} verifies nothing",
               "drop --speckd-verification, or pass --method speckd", "speckd_verification", "method")
        for name in ("switch_threshold", "switch_window", "switch_divergence"):
            _check(method == "adaswitch" or getattr(sc, name) == getattr(default, name),
                   f"--{name.replace('_', '-')} is an AdaSwitch setting; --method {method} never switches",
                   f"drop --{name.replace('_', '-')}, or pass --method adaswitch", name, "method")
        _check(method != "speckd" or sc.k >= 1, "--method speckd with --k 0 rejects every token: nothing to train on",
               "pass --k 1 or more (--k at the vocabulary size accepts every token: on-policy KD)", "k", "method")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "sample": SampleConfig}

# The flat names of run settings -- the command-line option names, also the flat keys of a --config
# file -- and the (section, field) each one sets. A field missing here has no option (`mode` is set
# per method, `keep_teacher_logits` is internal, `target_*` come from train.teacher_topk / loss_temperature).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("model", name) for name in ("teacher", "student", "dtype", "teacher_dtype", "teacher_device",
                                          "student_device", "trust_remote_code")},
    "model": ("model", "student"),  # `skd sft --model`: the one model it trains
    **{name: ("data", name) for name in ("task", "data", "limit", "val_data", "val_limit")},
    "field": ("data", "fields"), "data_seed": ("data", "seed"),
    **{f.name: ("train", f.name) for f in dataclasses.fields(TrainConfig)},
    **{f.name: ("sample", f.name) for f in dataclasses.fields(SampleConfig)
       if f.name not in ("mode", "stop_strings", "keep_teacher_logits", "target_topk", "target_temperature")},
    "stop": ("sample", "stop_strings"),
}


def run_config_to_dict(cfg: RunConfig) -> dict:
    """The JSON-ready form of a RunConfig, as saved with every run (run_config.json)."""
    return dataclasses.asdict(cfg)

"""Data-parallel training over processes: launch environment, DDP / FSDP wrapping, reductions.

Public: Dist (world_size, rank, is_main, sum_floats, broadcast_object, barrier, close),
init_from_env(batch_size, *, fsdp, device, ...) -> Dist, resolve_rank_device(name, dist),
wrap_student(student, dist, fsdp), unwrap(module), full_student(module, dist) (context: the student
for sampling and evaluation), LockstepStudent, fsdp_units(module), full_state_dict(module),
optimizer_state(module, optimizer),
load_optimizer_state(module, optimizer, state), clip_grad_norm(module, max_norm, dist),
no_sync(module, skip), is_fsdp(module).

`torchrun --nproc-per-node N -m skd distill ...` and `accelerate launch` both describe the job with
the environment variables WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them
(or with WORLD_SIZE=1) training runs in this one process and every reduction is the identity.
Backends: gloo on CPU, nccl on CUDA (one GPU per process, cuda:LOCAL_RANK). The output folder
must be on a file system every process sees (rank 0 writes, every rank reads on --resume).

DDP replicates the student; FSDP (`--fsdp`) shards its weights, gradients and AdamW state over the
ranks, one unit per decoder layer, so a forward or backward holds one layer's full weights at a
time: the full student never has to fit one device (only the checkpoint writer gathers it, to
host memory from a GPU). Sampling and evaluation run through the sharded module in lockstep
(LockstepStudent). The teacher is frozen and replicated on every rank.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch

from skd.core.errors import SkdError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise SkdError(f"environment variable {name}={raw!r} is not an integer",
                       "launch with torchrun / accelerate launch, or unset it") from e


@dataclass
class Dist:
    """The process group of this run (or a stand-in for a single process)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False   # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        # nccl only reduces CUDA tensors; gloo only CPU ones.
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 (counts stay exact up to 2**53)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (picklable data produced by this program, never read from disk)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def resolve_rank_device(name: str, dist: Dist) -> str:
    """A device option for this rank: auto / cuda become cuda:LOCAL_RANK when several processes run."""
    if not dist.enabled:
        return name
    if name in ("auto", "cuda"):
        return f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    return name


def init_from_env(batch_size: int, *, fsdp: bool, device: str, micro_batch_size: int | None = None,
                  sample_chunk: int | None = None) -> Dist:
    """Read the launcher's environment, check the batch splits, join (or create) the process group.

    Every check runs before the process group is joined, so a bad option fails on every rank
    with the same message instead of leaving the others waiting.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise SkdError(f"inconsistent launch environment (RANK={rank}, WORLD_SIZE={world})",
                       "launch with torchrun --nproc-per-node N or accelerate launch")
    if fsdp and world == 1:
        raise SkdError("--fsdp shards the student across processes, but this is a single process",
                       "launch with torchrun --nproc-per-node N -m skd distill --fsdp ... (N >= 2), or drop --fsdp")
    if batch_size % world:
        raise SkdError(f"the batch size {batch_size} does not split evenly over {world} processes",
                       f"pass a --batch-size that is a multiple of {world} (the global batch is split across ranks)")
    per_rank = batch_size // world
    if micro_batch_size is not None and per_rank % micro_batch_size:
        raise SkdError(f"the micro batch size {micro_batch_size} does not divide the per-process batch {per_rank} "
                       f"(--batch-size {batch_size} over {world} processes)",
                       f"pass a --micro-batch-size that divides {per_rank}")
    if sample_chunk is not None and per_rank % sample_chunk:
        raise SkdError(f"the sampling chunk {sample_chunk} does not divide the per-process batch {per_rank} "
                       f"(--batch-size {batch_size} over {world} processes)",
                       f"pass a --sample-chunk that divides {per_rank}")
    if world == 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = device not in ("cpu",) and not device.startswith("cpu") and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():  # e.g. accelerate or the caller already joined the group
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise SkdError("the existing process group does not match WORLD_SIZE / RANK",
                           "launch with torchrun or accelerate launch without initialising torch.distributed first")
        return Dist(world, rank, local_rank, dist.get_backend(), owns_group=False)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise SkdError(f"WORLD_SIZE={world} but {var} is not set",
                           "launch with torchrun --nproc-per-node N (it sets MASTER_ADDR / MASTER_PORT)")
    # A generous timeout: rank 0 may spend minutes writing a large checkpoint while the others wait.
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=60))
    return Dist(world, rank, local_rank, backend, owns_group=True)


# --------------------------------------------------------------------------- wrapping

def is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return isinstance(module, FSDP)


def wrap_student(student, dist: Dist, fsdp: bool):
    """The module the loss runs through: the student itself, DDP(student) or FSDP(student)."""
    if not dist.enabled:
        return student
    dev = next(student.parameters()).device
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        # One FSDP unit per decoder layer (the classes transformers lists in _no_split_modules) plus
        # the root (embeddings, norm, head): a forward gathers one layer's weights at a time, so the
        # full student never has to sit on one device. Sampling and evaluation run through the
        # sharded module in lockstep (LockstepStudent); use_orig_params keeps the student's own
        # parameters addressable (checkpoints, clipping, the optimizer).
        layer_classes = {type(m) for m in student.modules()
                         if type(m).__name__ in set(getattr(student, "_no_split_modules", None) or ())}
        policy = ModuleWrapPolicy(layer_classes) if layer_classes else None
        return FSDP(student, device_id=dev, use_orig_params=True, auto_wrap_policy=policy)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(student, device_ids=[dev.index] if dev.type == "cuda" else None)


def unwrap(module):
    """The student inside a DDP / FSDP wrapper (or the module itself)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    return module.module if isinstance(module, (DDP, FSDP)) else module


def fsdp_units(module) -> int:
    """How many FSDP units shard the student (0: not FSDP)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return sum(isinstance(m, FSDP) for m in module.modules()) if is_fsdp(module) else 0


class LockstepStudent:
    """The FSDP student as sampling and evaluation see it: called like the plain model, attributes
    (config, generation_config, ...) read from it, but every forward runs through the sharded module,
    which gathers each layer's shard from the other ranks: a collective. Ranks sample different rows,
    finish at different rounds and may call the model a different number of times, so before each
    forward the ranks agree that a forward happens (one all-reduce of a flag); a rank whose own work is
    done calls drain(), which joins every remaining forward with a one-token dummy one until no rank
    has work left. Real forwards compute exactly what the plain model computes."""

    def __init__(self, fsdp_module, dist: "Dist"):
        # Set through __dict__: __getattr__ forwards every other name to the plain model (skd_inner).
        dev = next(fsdp_module.parameters()).device
        self.__dict__.update(_fsdp=fsdp_module, skd_inner=fsdp_module.module, _device=dev,
                             _flag_device=dev if dist.backend == "nccl" else torch.device("cpu"))

    def _agree(self, have_work: bool) -> bool:
        import torch.distributed as tdist

        flag = torch.tensor([1 if have_work else 0], dtype=torch.int32, device=self._flag_device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return bool(flag.item())

    def __call__(self, *args, **kwargs):
        self._agree(True)
        return self._fsdp(*args, **kwargs)

    def drain(self) -> None:
        """Take part in the other ranks' forwards until none has work left (call it on every rank)."""
        ids = torch.zeros(1, 1, dtype=torch.long, device=self._device)
        while self._agree(False):
            with torch.no_grad():
                self._fsdp(input_ids=ids, use_cache=False)

    def parameters(self, recurse: bool = True):
        return self._fsdp.parameters(recurse)

    def __getattr__(self, name):
        return getattr(self.skd_inner, name)


@contextlib.contextmanager
def full_student(module, dist: "Dist | None" = None):
    """Yield the student for sampling and evaluation: the plain module (DDP: the replica), or under
    FSDP a LockstepStudent over the sharded module; every rank must enter, and on leaving each one
    waits until all are done (the lockstep drain)."""
    if is_fsdp(module):
        if dist is None:
            raise ValueError("full_student needs the Dist of an FSDP module")
        lock = LockstepStudent(module, dist)
        yield lock
        lock.drain()      # not on an exception: that rank's error ends the job
        return
    yield unwrap(module)


def _offload(module) -> bool:
    # Gathered state goes to host memory only from a GPU (offloading CPU tensors crashes torch's FSDP).
    return next(module.parameters()).device.type == "cuda"


@contextlib.contextmanager
def _full_state_mode(module, rank0_only: bool):
    """FSDP's full (unsharded) state-dict mode for weights and optimizer, without the deprecation
    warning FSDP1's state-dict API prints on every call."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    off = _offload(module)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*state_dict_type.*")
        with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=off, rank0_only=rank0_only),
                                  FullOptimStateDictConfig(offload_to_cpu=off, rank0_only=rank0_only)):
            yield


def full_state_dict(module) -> dict | None:
    """FSDP: the student's full weights on the main rank (a collective; None elsewhere).
    Otherwise None: the plain student's own state dict is the full one."""
    if not is_fsdp(module):
        return None
    import torch.distributed as dist

    with _full_state_mode(module, rank0_only=True):
        sd = module.state_dict()
    return sd if dist.get_rank() == 0 else None


def optimizer_state(module, optimizer) -> dict | None:
    """The optimizer's full state on the main rank (FSDP: gathered, keyed by parameter name)."""
    if not is_fsdp(module):
        return optimizer.state_dict()
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with _full_state_mode(module, rank0_only=True):
        osd = FSDP.optim_state_dict(module, optimizer)
    return osd if dist.get_rank() == 0 else None


def load_optimizer_state(module, optimizer, state: dict) -> None:
    """Inverse of optimizer_state; every rank passes the full state it read from the checkpoint."""
    if is_fsdp(module):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with _full_state_mode(module, rank0_only=False):
            state = FSDP.optim_state_dict_to_load(module, optimizer, state)
    optimizer.load_state_dict(state)


def clip_grad_norm(module, max_norm: float, dist: Dist) -> float:
    """Global gradient norm, and the gradients scaled to at most max_norm (torch's rule: coefficient
    max_norm / (norm + 1e-6), capped at 1). Under FSDP every rank holds a disjoint shard of the
    gradients: the squared norms are summed over the ranks (in float64, which FSDP's own
    clip_grad_norm_ refuses for float64 weights)."""
    if not is_fsdp(module):
        return float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))
    grads = [p.grad for p in module.parameters() if p.grad is not None and p.grad.numel()]
    local = float(torch.stack([g.detach().double().pow(2).sum() for g in grads]).sum()) if grads else 0.0
    total = dist.sum_floats([local])[0] ** 0.5
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def no_sync(module, skip: bool):
    """DDP: skip the gradient all-reduce for all but the last micro-batch (it happens once, at the end)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if skip and isinstance(module, DDP):
        return module.no_sync()
    return contextlib.nullcontext()

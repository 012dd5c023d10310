"""Data-parallel training (gloo, CPU, 2 processes) gives the weights of one process with the same global batch.

One spawn of 2 processes runs DDP skd, DDP supervised and FSDP skd one after the other (each process
start costs seconds); the single-process references run here. A second test launches the real
command line through torchrun (`python -m torch.distributed.run ... -m skd distill`).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from skd.core.errors import SkdError

V = 103  # the char tokenizer's vocabulary
N_EXAMPLES = 10   # not a multiple of the batch (4) nor of the processes (2): the stream crosses epochs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    """Identical models and data in every process (seeded)."""
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer
    from helpers import addition_examples

    tok = build_char_tokenizer()
    teacher = tiny_model("llama", V, seed=1, dtype=torch.float64, hidden=32, layers=2)
    student = tiny_model("llama", V, seed=2, dtype=torch.float64, hidden=16, layers=2)
    examples = addition_examples(tok, N_EXAMPLES)
    return (teacher, student, tok), (examples, examples[:3])


def _cfg(out: Path, method: str, **train_kw) -> RunConfig:
    kw = dict(method=method, max_steps=3, batch_size=4, eval_every=3, save_every=2, lr=1e-3, output_dir=str(out))
    kw.update(train_kw)
    return RunConfig(model=ModelConfig(), data=DataConfig(task="arith", val_limit=3), train=TrainConfig(**kw),
                     sample=SampleConfig(max_new_tokens=6, gamma=3, k=5))


RUNS = [("ddp-skd", "skd", {}), ("ddp-supervised", "supervised", {}), ("fsdp-skd", "skd", {"fsdp": True}),
        # checkpointed FSDP units, and TensorBoard written by rank 0 alone
        ("fsdp-skd-checkpointing", "skd", {"fsdp": True, "gradient_checkpointing": True, "report_to": "tensorboard"})]


def _child(rank: int, world: int, root: str, ports: list[int]) -> None:
    from skd.core.train import train

    torch.set_num_threads(1)
    root = Path(root)

    def launch(port):
        os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))

    for (name, method, kw), port in zip(RUNS, ports):
        launch(port)
        models, examples = _setup()
        summary = train(_cfg(root / name, method, **kw), models=models, examples=examples)
        assert summary["steps"] == 3 and summary["world_size"] == world
        # FSDP: one unit per decoder layer (2) plus the root; DDP: none
        assert summary["fsdp_units"] == (3 if kw.get("fsdp") else 0), summary["fsdp_units"]
    # FSDP resume: a copy of the FSDP run without `final` continues from its step-2 checkpoint
    # (gathered optimizer state re-sharded on load); the parent compares the final weights.
    dst = root / "fsdp-resume"
    if rank == 0:
        tmp = root / ".fsdp-resume-copy"
        shutil.copytree(root / "fsdp-skd", tmp)
        shutil.rmtree(tmp / "final")
        tmp.rename(dst)
    while not dst.exists():
        time.sleep(0.02)
    launch(ports[len(RUNS)])
    models, examples = _setup()
    summary = train(_cfg(dst, "skd", fsdp=True, resume=True), models=models, examples=examples)
    assert summary["resumed_from"] == str(dst / "checkpoints" / "step-000002")


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_child, args=(2, str(tmp_path), [_free_port() for _ in range(len(RUNS) + 1)]), nprocs=2, join=True)
    from skd.core.train import train

    # The losses sum in fp32: one thread here too, so that reductions run in the children's order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_with_single_process(tmp_path, train)
    finally:
        torch.set_num_threads(threads)


def _compare_with_single_process(tmp_path, train):
    for method in ("skd", "supervised"):
        models, examples = _setup()
        # The 2-process run samples in chunks of its per-process batch (2) and backpropagates 2 rows at a
        # time: the same chunking here makes every forward identical; only the gradient sum order differs.
        train(_cfg(tmp_path / f"one-{method}", method, sample_chunk=2, micro_batch_size=2),
              models=models, examples=examples)
        ref = _weights(tmp_path / f"one-{method}" / "final")
        runs = ["ddp-skd", "fsdp-skd", "fsdp-skd-checkpointing"] if method == "skd" else ["ddp-supervised"]
        for name in runs:
            got = _weights(tmp_path / name / "final")
            assert set(got) == set(ref)
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=f"{name}: {k}")
        start = _weights(tmp_path / f"one-{method}" / "checkpoints" / "step-000002")
        assert any(not torch.equal(start[k], ref[k]) for k in ref)  # it did train
        one = [json.loads(x) for x in (tmp_path / f"one-{method}" / "metrics.jsonl").read_text().splitlines()]
        two = [json.loads(x) for x in (tmp_path / runs[0] / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in two] == [1, 2, 3]   # rank 0 alone writes: no duplicated lines
        for a, b in zip(one, two):
            assert a["response_tokens"] == b["response_tokens"] and a["replaced"] == b["replaced"]
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)   # normalised by the GLOBAL count
            assert ("val_loss" in a) == ("val_loss" in b)
            assert a.get("val_loss", 0.0) == pytest.approx(b.get("val_loss", 0.0), rel=1e-9)
    resumed, straight = _weights(tmp_path / "fsdp-resume" / "final"), _weights(tmp_path / "fsdp-skd" / "final")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    # Only rank 0 wrote: one final, the rolling step checkpoint, no stray temporary folders.
    assert sorted(p.name for p in (tmp_path / "ddp-skd" / "checkpoints").iterdir()) == ["step-000002"]
    assert not list(tmp_path.rglob(".*tmp-*"))
    events = list((tmp_path / "fsdp-skd-checkpointing" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1                                   # rank 0 alone reports
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    state = json.loads((tmp_path / "fsdp-skd" / "final" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["sample_chunk"] == 2 and state["step"] == 3


# Uneven sampling work under a per-layer FSDP student: rank 0 samples 3 prompts with a long budget,
# rank 1 one prompt with a short one (and then an evaluation pass rank 0 alone does), so the ranks
# call the student a different number of times; the lockstep wrapper must neither hang nor change
# a token or a logit against the plain model.
LOCK_WORK = {0: dict(prompts=[[5, 6, 7], [8, 9], [10, 11, 12, 13]], max_new_tokens=9),
             1: dict(prompts=[[14, 15]], max_new_tokens=2)}


def _lockstep_child(rank: int, world: int, root: str, port: int) -> None:
    from skd.core import distributed
    from skd.core.config import SampleConfig
    from skd.core.sampling import sample

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = distributed.init_from_env(2, fsdp=True, device="cpu")
    (teacher, student, _), _ = _setup()
    wrapped = distributed.wrap_student(student, dist, fsdp=True)
    assert distributed.fsdp_units(wrapped) == 3
    work = LOCK_WORK[rank]
    cfg = SampleConfig(mode="skd", k=5, gamma=3, max_new_tokens=work["max_new_tokens"])
    out = {}
    with distributed.full_student(wrapped, dist) as st:
        s = sample(teacher, st, work["prompts"], cfg, student_generator=torch.Generator().manual_seed(1),
                   teacher_generator=torch.Generator().manual_seed(2), eos_token_id=3, vocab_size=V)
        out["tokens"], out["lengths"] = s.tokens, s.lengths
    with distributed.full_student(wrapped, dist) as st:
        if rank == 0:   # an evaluation only the main rank runs
            with torch.no_grad():
                out["logits"] = st(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    torch.save(out, Path(root) / f"lock{rank}.pt")
    dist.close()


def test_lockstep_sampling_through_a_sharded_student_matches_the_plain_model(tmp_path):
    from skd.core.config import SampleConfig
    from skd.core.sampling import sample

    mp.spawn(_lockstep_child, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    (teacher, student, _), _ = _setup()
    for rank, work in LOCK_WORK.items():
        got = torch.load(tmp_path / f"lock{rank}.pt", weights_only=True)
        cfg = SampleConfig(mode="skd", k=5, gamma=3, max_new_tokens=work["max_new_tokens"])
        ref = sample(teacher, student, work["prompts"], cfg, student_generator=torch.Generator().manual_seed(1),
                     teacher_generator=torch.Generator().manual_seed(2), eos_token_id=3, vocab_size=V)
        assert torch.equal(got["tokens"], ref.tokens) and torch.equal(got["lengths"], ref.lengths)
        if rank == 0:
            with torch.no_grad():
                want = student(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
            torch.testing.assert_close(got["logits"], want, rtol=1e-12, atol=1e-12)
    lengths = [int(torch.load(tmp_path / f"lock{r}.pt", weights_only=True)["lengths"].max()) for r in (0, 1)]
    assert lengths[0] > lengths[1] + 3      # the ranks really had different amounts of work


def test_batch_not_divisible_by_processes_is_refused_before_joining(tmp_path, monkeypatch):
    from skd.core.train import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SkdError, match="multiple of 3"):
        train(_cfg(tmp_path / "x", "supervised"), models=None, examples=None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SkdError, match="single process"):
        train(_cfg(tmp_path / "x", "supervised", fsdp=True))
    assert not (tmp_path / "x").exists()


def test_torchrun_runs_the_command_line_on_two_processes(tmp_path):
    from skd.core.presets import tiny_model
    from skd.core.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    for name, seed, hidden, layers in (("teacher", 1, 32, 2), ("student", 2, 16, 1)):
        tiny_model("llama", V, seed=seed, hidden=hidden, layers=layers).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "skd", "distill", "--method", "supervised", "--teacher", str(tmp_path / "teacher"),
           "--student", str(tmp_path / "student"), "--limit", "7", "--val-limit", "0", "--batch-size", "4",
           "--max-steps", "2", "--max-new-tokens", "8", "--save-every", "0", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2

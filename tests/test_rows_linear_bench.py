"""`skd bench rows-linear` (skd.benchmarks.rows_linear): its result's shape, its agreement check,
and its one-line errors for bad options."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from skd.benchmarks import rows_linear as rows_bench
from skd.cli.main import main


def test_run_times_every_case_and_checks_the_kernel_against_blas():
    result = rows_bench.run(shapes=((40, 24), (7, 9)), rows=(1, 5), repeats=3, stream_mb=1, threads=1)
    assert result["threads"] == 1 and result["config"]["rows"] == [1, 5]
    cases = {(c["N"], c["K"], c["rows"]): c for c in result["cases"]}
    assert set(cases) == {(40, 24, 1), (40, 24, 5), (7, 9, 1), (7, 9, 5)}
    for c in cases.values():
        assert c["copies"] >= 2 and c["median_ms"]["blas"] > 0 and c["median_ms"]["rows_linear"] > 0
        assert c["blas_over_rows_linear"] == pytest.approx(c["median_ms"]["blas"] / c["median_ms"]["rows_linear"])
        assert c["max_rel_diff"] < 1e-5       # float32 rounding, not a wrong product


@pytest.mark.parametrize("kwargs", [dict(repeats=0), dict(stream_mb=0), dict(rows=()), dict(rows=(0,)),
                                    dict(shapes=((4, 0),)), dict(threads=0)])
def test_run_refuses_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        rows_bench.run(**{"shapes": ((8, 8),), "rows": (1,), "repeats": 1, "stream_mb": 1, **kwargs})


def test_cli_writes_the_json_and_rejects_bad_options(tmp_path):
    out = tmp_path / "rows.json"
    r = CliRunner().invoke(main, ["bench", "rows-linear", "--shape", "16x8", "--rows", "1,3", "--repeats", "1",
                                  "--stream-mb", "1", "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert [c["rows"] for c in json.loads(out.read_text())["cases"]] == [1, 3]
    for args, text in ((["--shape", "3x"], "is not NxK"), (["--rows", "1,a"], "comma-separated"),
                       (["--rows", "0"], "must be >= 1")):
        r = CliRunner().invoke(main, ["bench", "rows-linear", *args])
        assert r.exit_code == 2 and text in r.output

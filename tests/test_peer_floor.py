"""The SKD step's floor (skd.benchmarks.peer_floor): its cost model against a brute-force evaluation, its
agreement with --gamma auto's rule when a teacher forward has one price, the target's acceptance, and the
measured forward prices on tiny models."""
import pytest
import torch

from skd.benchmarks.peer_floor import floors, sampling_ratio
from skd.core.rules import adaptive_gamma


def _costs(s1, teacher):
    return {"student": [s1], "teacher": list(teacher)}


@pytest.mark.parametrize("a", [0.0, 0.2, 0.68, 0.9, 1.0])
def test_sampling_ratio_is_the_cheapest_draft_length(a):
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        s1 = float(torch.rand(1, generator=gen)) * 50 + 10
        t = sorted(float(x) * 100 + 20 for x in torch.rand(8, generator=gen))   # grows with positions
        costs = _costs(s1, t)

        def brute(g):
            tokens = g if a == 1.0 else sum(a ** i for i in range(g))
            return (g * s1 + t[g - 1]) / (tokens * s1)

        plan, ratio = sampling_ratio(a, costs, range(1, 9))
        assert ratio == pytest.approx(min(brute(h) for h in range(1, 9)))
        assert brute(int(plan[1:])) == pytest.approx(ratio) and plan[0] == "g"
    assert sampling_ratio(0.0, _costs(10.0, [30.0, 40.0, 50.0]), range(1, 3)) == ("g1", pytest.approx(4.0))


@pytest.mark.parametrize("a", [0.0, 0.01, 0.2, 0.68, 1.0])
def test_sampling_ratio_with_teacher_led_rounds_is_the_cheapest_plan(a):
    """Teacher-led rounds of n: n one-position teacher forwards + one student forward over n positions for
    (1 - (1 - a)^n) / a tokens (every kept token taken to break the round)."""
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        s = sorted(float(x) * 40 + 10 for x in torch.rand(8, generator=gen))
        t = sorted(float(x) * 100 + 20 for x in torch.rand(8, generator=gen))
        costs = {"student": s, "teacher": t}

        def student_led(g):
            return (g * s[0] + t[g - 1]) / ((g if a == 1.0 else sum(a ** i for i in range(g))) * s[0])

        def teacher_led(n):
            return (n * t[0] + s[n - 1]) / ((n if a == 0.0 else sum((1 - a) ** i for i in range(n))) * s[0])

        plan, ratio = sampling_ratio(a, costs, range(1, 9), True)
        best = min(min(student_led(g) for g in range(1, 9)), min(teacher_led(n) for n in range(1, 9)))
        assert ratio == pytest.approx(best)
        assert (student_led if plan[0] == "g" else teacher_led)(int(plan[1:])) == pytest.approx(ratio)
        assert sampling_ratio(a, costs, range(1, 9))[1] >= ratio       # never dearer with teacher-led rounds
    weak = {"student": [36.0, 40.0, 45.0, 47.0, 50.0, 53.0, 56.0, 60.0], "teacher": [90.0] * 8}
    assert sampling_ratio(0.01, weak, range(1, 9), True)[0][0] == "t"    # a weak student: the teacher leads


@pytest.mark.parametrize("a", [0.1, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("r", [1.25, 2.4, 6.0])
def test_one_teacher_price_gives_the_draft_length_gamma_auto_chooses(a, r):
    costs = _costs(10.0, [10.0 * r] * 8)
    plan, ratio = sampling_ratio(a, costs, range(1, 9))
    g = int(plan[1:])
    assert g == adaptive_gamma(a, r, 8, False)
    assert ratio == pytest.approx((g + r) / ((1 - a ** g) / (1 - a)))


def _results(a_auto, a_fixed=0.5):
    row = dict(method="skd", update_s=2.0, teacher_s=0.0, step_s=9.0)
    return {"trl_on_policy": {"step_s": 7.0},
            "skd_on_policy": {"method": "on-policy", "sampling_s": 3.0, "teacher_s": 0.8, "update_s": 2.0},
            "skd_skd_gamma_auto": {**row, "gamma": "auto", "per_token_acceptance": a_auto},
            "skd_skd_gamma_5": {**row, "gamma": 5, "per_token_acceptance": a_fixed}}


def test_floors_per_row_and_the_acceptance_a_target_needs():
    costs = _costs(40.0, [90.0 + 20.0 * q for q in range(8)])
    out = floors(_results(0.68), costs, gamma_max=8, targets=(1.2, 1.5))
    assert set(out) == {"skd_skd_gamma_auto", "skd_skd_gamma_5"}
    auto, fixed = out["skd_skd_gamma_auto"], out["skd_skd_gamma_5"]
    plan, ratio = sampling_ratio(0.68, costs, range(1, 9))
    assert auto["best_plan"] == plan and auto["floor_step_s"] == pytest.approx(ratio * 3.0 + 2.0)
    assert auto["floor_over_trl"] == pytest.approx(auto["floor_step_s"] / 7.0)
    assert auto["measured_over_floor"] == pytest.approx(9.0 / auto["floor_step_s"])
    assert fixed["best_plan"] == "g5" and fixed["per_token_acceptance"] == 0.5
    need, looser = auto["acceptance_for_target"]["1.2"], auto["acceptance_for_target"]["1.5"]
    assert need is not None and 0 < need <= 1
    assert looser is not None and looser <= need

    def step(a):
        return sampling_ratio(a, costs, range(1, 9))[1] * 3.0 + 2.0

    assert step(need) <= 1.2 * 7.0 < step(need - 0.01)       # the smallest grid point that meets it
    slow = _costs(40.0, [400.0] * 8)                          # a teacher 10 student forwards dear
    assert floors(_results(0.68), slow, gamma_max=8, targets=(1.2,))["skd_skd_gamma_auto"]["acceptance_for_target"] == {
        "1.2": None}


def test_a_fixed_gamma_row_is_priced_at_its_own_length():
    costs = _costs(40.0, [90.0 + 20.0 * q for q in range(8)])
    out = floors(_results(0.68, a_fixed=0.68), costs, gamma_max=8)
    g5 = sampling_ratio(0.68, costs, (5,))[1] * 3.0 + 2.0
    assert out["skd_skd_gamma_5"]["best_plan"] == "g5" and out["skd_skd_gamma_5"]["floor_step_s"] == pytest.approx(g5)
    assert out["skd_skd_gamma_5"]["floor_step_s"] >= out["skd_skd_gamma_auto"]["floor_step_s"]
    assert "acceptance_for_target" not in out["skd_skd_gamma_auto"]    # no target asked


def test_a_row_that_let_the_teacher_lead_is_floored_with_teacher_led_rounds():
    costs = {"student": [36.0 + 3 * q for q in range(8)], "teacher": [90.0 + 10.0 * q for q in range(8)]}
    res = _results(0.012)
    led = floors({**res, "skd_skd_gamma_auto": {**res["skd_skd_gamma_auto"], "teacher_led": True}}, costs, gamma_max=8)
    plain = floors(res, costs, gamma_max=8)
    assert led["skd_skd_gamma_auto"]["best_plan"][0] == "t" and plain["skd_skd_gamma_auto"]["best_plan"] == "g1"
    assert led["skd_skd_gamma_auto"]["floor_step_s"] < plain["skd_skd_gamma_auto"]["floor_step_s"]
    short = {"student": costs["student"][:1], "teacher": costs["teacher"]}   # student widths not measured
    assert floors({**res, "skd_skd_gamma_auto": {**res["skd_skd_gamma_auto"], "teacher_led": True}}, short,
                  gamma_max=8)["skd_skd_gamma_auto"]["best_plan"] == "g1"

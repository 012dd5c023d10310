"""The SKD step's floor on the machine at hand: what any draft length could reach at the acceptance
measured, priced with forward costs measured here, and the acceptance a step-time target needs.

Public: sampling_ratio(acceptance, costs, gammas, teacher_led) -> (plan, ratio); floors(results, costs, *,
gamma_max, targets) -> dict. The costs are skd.core.forward_prices.forward_costs's.

Why: a measured SKD step over TRL's on-policy step says how far skd is from a target, not whether any
implementation of SKD's semantics could meet it on this hardware. The model is the one `--gamma auto`
plans with (Leviathan et al. 2023, section 3): each drafted token is kept with probability a,
independently, until the first rejection; with the bonus token discarded (SKD) a round that drafts g
tokens yields (1 - a^g) / (1 - a) tokens per row and costs g one-position student forwards plus one
teacher forward over g positions (the last committed token and the draft less its last token, as
skd.core.sampling's verification pass covers them without the bonus). A teacher-led round of n
(rules.plan_round, --gamma auto) costs n one-position teacher forwards plus one student forward over n
positions and yields (1 - (1 - b)^n) / b tokens, b = a here (every kept token taken to differ from the
teacher's draw: the most a teacher-led round can lose, so its floor is not flattered). On-policy sampling
costs one one-position student forward per token. The prices are measured (ms per KV-cached forward
at the step's batch, after its prompts), not weight bytes: on a CPU a forward's price grows with its
positions, which the weight-byte model of `--gamma auto` does not see. The floor of a step is then
ratio x the measured on-policy sampling time + the SKD row's own update time (its teacher targets
come from the verification passes, so it has no teacher pass).
"""
from __future__ import annotations

from skd.core.rules import round_tokens


def sampling_ratio(acceptance: float, costs: dict, gammas, teacher_led: bool = False) -> tuple[str, float]:
    """(best plan, SKD sampling cost per token over on-policy sampling's) at acceptance a: among student-led
    drafts of g in `gammas` ("g3") and, when teacher_led, teacher-led rounds of n in `gammas` ("t5"; needs
    the student's prices at those widths)."""
    s, t = costs["student"], costs["teacher"]
    best = None
    for g in gammas:   # t[g - 1]: the teacher over g positions (bonus discarded)
        ratio = (g * s[0] + t[g - 1]) / (round_tokens(acceptance, g) * s[0])
        if best is None or ratio < best[1] * (1 - 1e-12):
            best = (f"g{g}", ratio)
    for n in (gammas if teacher_led else ()):   # s[n - 1]: the student over n positions
        ratio = (n * t[0] + s[n - 1]) / (round_tokens(1.0 - acceptance, n) * s[0])
        if ratio < best[1] * (1 - 1e-12):
            best = (f"t{n}", ratio)
    return best


def floors(results: dict, costs: dict, *, gamma_max: int, targets: tuple[float, ...] = ()) -> dict:
    """Per SKD row of the distill section's results: its floor step time (s), that over TRL's step and the
    measured step over its floor; and per target t the per-token acceptance at which the floor meets t x
    TRL's step (None where even a = 1 does not; keyed by f"{t:g}"). Rows of --gamma auto may choose any g
    in 1..gamma_max, and a teacher-led round of any n there when the row allowed them (row["teacher_led"]);
    fixed-gamma rows only their g."""
    pol, trl = results.get("skd_on_policy"), results.get("trl_on_policy")
    if pol is None:
        return {}
    out = {}
    for name, row in results.items():
        a = row.get("per_token_acceptance")
        if row.get("method") != "skd" or a is None:
            continue
        auto = row["gamma"] == "auto"
        gammas = range(1, gamma_max + 1) if auto else (int(row["gamma"]),)
        led = auto and bool(row.get("teacher_led")) and len(costs["student"]) >= gamma_max

        def step_s(acc: float) -> tuple[str, float]:
            plan, ratio = sampling_ratio(acc, costs, gammas, led)
            return plan, ratio * pol["sampling_s"] + row["update_s"] + row["teacher_s"]

        plan, floor_s = step_s(a)
        rec = {"per_token_acceptance": a, "best_plan": plan, "floor_step_s": floor_s,
               "measured_over_floor": row["step_s"] / floor_s}
        if trl is not None:
            rec["floor_over_trl"] = floor_s / trl["step_s"]
            if targets:
                rec["acceptance_for_target"] = {
                    f"{t:g}": next((i / 100 for i in range(101) if step_s(i / 100)[1] <= t * trl["step_s"]), None)
                    for t in targets}
        out[name] = rec
    return out

"""Speculative decoding with the (distilled) student as draft model and the teacher as target.

Public: speculative_generate(teacher, student, prompt_ids, *, gamma, max_new_tokens,
temperature=0.0, top_p=1.0, generator=None, ..., teacher_prices=None) -> (tokens, stats); SpecStats.

The student drafts gamma tokens, the teacher verifies them in one forward pass (Leviathan et al.
2023; Chen et al. 2023). Greedy: accept while the draft equals the teacher's argmax. Sampling:
the acceptance rule u < p/q (op `speculative_accept`) with residual resampling, so the output is
distributed exactly as teacher sampling. A bonus token follows a fully accepted draft. Batched with
ragged rows and KV caches for both models: it is the SKD sampler's loop (skd.core.sampling) with
the speculative verification rule. Shapes: B prompts, D = gamma, V vocabulary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from skd.core.rules import SpeculativeRule
from skd.core.sampling import SampleConfig, sample, share


@dataclass
class SpecStats:
    drafted: int                 # draft tokens put to the teacher
    accepted: int                # of those, accepted
    generated: int               # output tokens (accepted + teacher corrections / bonus tokens)
    rounds: int                  # batched teacher verification passes
    row_rounds: int              # sum over rounds of the rows in the pass (= passes for B = 1)
    teacher_only_rounds: int = 0  # --gamma auto: rounds without a draft (drafting did not pay)

    acceptance_rate = property(lambda self: share(self.accepted, self.drafted), doc="Accepted / drafted tokens.")
    mean_accepted_per_round = property(lambda self: share(self.accepted, self.row_rounds),
                                       doc="Drafted tokens accepted per row and verification pass.")
    tokens_per_round = property(lambda self: share(self.generated, self.row_rounds),
                                doc="Output tokens per row and verification pass.")
    teacher_forwards_per_token = property(lambda self: share(self.row_rounds, self.generated),
                                          doc="Teacher passes a sequence needed per generated token "
                                              "(1.0 = plain teacher decoding).")

    def __add__(self, other: "SpecStats") -> "SpecStats":
        """Counts of two calls together (every field is a count)."""
        return SpecStats(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, mean_accepted_per_round=self.mean_accepted_per_round,
                 tokens_per_round=self.tokens_per_round, teacher_forwards_per_token=self.teacher_forwards_per_token)
        return d


def speculative_generate(teacher, student, prompt_ids: list[list[int]], *, gamma: int | str, max_new_tokens: int,
                         temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                         tokenizer=None, stop_strings: tuple[str, ...] = (), eos_token_id=None,
                         vocab_size: int | None = None,
                         teacher_prices: tuple[float, ...] | None = None) -> tuple[list[list[int]], SpecStats]:
    """Generated ids per prompt (response only, EOS included) and acceptance statistics.

    gamma: a fixed draft length, or "auto": each round's from the acceptance so far, up to 8, and no
    draft at all (the teacher alone writes the round's token) while no draft length is expected to beat
    the teacher alone, with a probing draft every skd.core.sampling.PROBE_EVERY such rounds. Greedy
    output is the teacher's greedy output and sampled output follows the teacher's distribution either
    way.

    teacher_prices: under gamma "auto", the price of a teacher pass over 1, 2, ... positions in
    one-position draft forwards (skd.core.forward_prices.measure_teacher_prices measures them on the
    machine, at the batch size of the call); None prices every pass at the two models' weight-byte
    ratio, right where a pass of a few positions costs what reading the weights costs (a GPU at small
    batches), optimistic on a CPU, where a pass's cost grows with its positions and rows."""
    cfg = SampleConfig(mode="skd", gamma=gamma, keep_bonus=True, max_new_tokens=max_new_tokens,
                       teacher_prices=teacher_prices,
                       student_temperature=temperature, student_top_p=top_p, teacher_temperature=temperature,
                       teacher_top_p=top_p, stop_strings=tuple(stop_strings), keep_teacher_logits=False)
    rule = SpeculativeRule(temperature, top_p, cfg.max_draft)
    out = sample(teacher, student, prompt_ids, cfg, student_generator=generator, teacher_generator=generator,
                 tokenizer=tokenizer, eos_token_id=eos_token_id, vocab_size=vocab_size, rule=rule)
    stats = SpecStats(drafted=out.proposed, accepted=out.accepted, generated=out.generated, rounds=out.rounds,
                      row_rounds=out.row_rounds, teacher_only_rounds=sum(g == 0 for g in out.draft_lengths or ()))
    return out.responses(), stats

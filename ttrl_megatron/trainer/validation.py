"""Validation: generate ``val_kwargs.n`` samples per validation prompt (DP over ranks), grade them against the
dataset labels, and report ``val-core/<data_source>/acc/{mean@n, maj@n, pass@n}`` (``val-aux`` for smaller k;
ttrl/metrics.py defines them). Optionally dumps every generation to ``validation_data_dir/<step>.jsonl`` (rank 0).

Grading is spread: every rank holds all generations, grades its contiguous share of the prompts, and the per-share
means are all-gathered and combined weighted by each share's prompt count per data source, in rank order, so every
rank returns the same metrics dict (equal to grading everything in one process up to float rounding; identical with
one rank). No megatron, no vllm imports.
"""

from __future__ import annotations

from ttrl_megatron.config import ValKwargsConfig
from ttrl_megatron.rollout.base import SamplingConfig
from ttrl_megatron.ttrl import answer_for_label, compute_validation_metrics, grade_many

from .dumps import generation_rows, write_jsonl
from .assemble import split_evenly
from .generation import VALIDATION, RolloutGroups, all_gather_objects, generate_batch, sampling_for


def val_sampling(val: ValKwargsConfig, max_tokens: int) -> SamplingConfig:
    """Validation sampling (greedy when ``do_sample`` is False or the temperature is 0)."""
    temperature = val.temperature if val.do_sample else 0.0
    return SamplingConfig(temperature=temperature, top_p=val.top_p, top_k=val.top_k, max_tokens=max_tokens,
                          logprobs=False)


class Validator:
    def __init__(self, loader, val: ValKwargsConfig, *, engine, tokenizer, grader, seed: int, rank: int,
                 groups: RolloutGroups, response_length: int, dump_dir: str | None, extraction: str = "boxed"):
        self.loader, self.n = loader, val.n
        self.sampling = val_sampling(val, response_length)
        self.engine, self.tokenizer, self.grader = engine, tokenizer, grader
        self.seed, self.rank, self.groups, self.world = seed, rank, groups, groups.world
        self.response_length, self.dump_dir, self.extraction = response_length, dump_dir, extraction

    def _generate_all(self, step: int) -> tuple[list, list[list[str]], list, list]:
        prompts, responses, truths, sources = [], [], [], []
        for i, batch in enumerate(self.loader):
            sampling = sampling_for(self.sampling, self.seed, step * 100003 + i, VALIDATION, self.groups)
            out = generate_batch(self.engine, self.tokenizer, batch, self.n, sampling, step=step, groups=self.groups,
                                 response_length=self.response_length)
            texts = list(out.obj("response_text"))
            responses += [texts[j:j + self.n] for j in range(0, len(texts), self.n)]
            prompts += list(batch["raw_prompt"])
            truths += list(batch["ground_truth"])
            sources += list(batch["data_source"])
        return prompts, responses, truths, sources

    def run(self, step: int) -> dict[str, float]:
        """Validate the current rollout weights; collective (every rank must call it)."""
        prompts, responses, truths, sources = self._generate_all(step)
        start, end = split_evenly(len(prompts), self.world)[self.rank]
        share = sources[start:end]
        local = (compute_validation_metrics(responses[start:end], truths[start:end], share, grader=self.grader,
                                             extraction=self.extraction)
                 if end > start else {})
        counts = {src: share.count(src) for src in dict.fromkeys(share)}
        metrics = combine_shares(all_gather_objects((local, counts)))
        if self.rank == 0 and self.dump_dir:
            self._dump(step, prompts, responses, truths)
        return metrics

    def _dump(self, step: int, prompts, responses, truths) -> None:
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat = [r for rs in responses for r in rs]
        flat_truths = [t for t, rs in zip(truths, responses) for _ in rs]
        answers = [answer_for_label(r, t, self.extraction) for r, t in zip(flat, flat_truths)]
        pairs = [(a, str(t)) for a, t in zip(answers, flat_truths) if a is not None and t is not None]
        verdicts = iter(grade_many(pairs, self.grader))
        scores = [float(next(verdicts)) if a is not None and t is not None else 0.0
                  for a, t in zip(answers, flat_truths)]
        write_jsonl(self.dump_dir, step, generation_rows(step, flat_prompts, flat, answers, [None] * len(flat),
                                                         flat_truths, scores))


def combine_shares(parts: list[tuple[dict, dict]]) -> dict[str, float]:
    """Per-share validation means -> the whole set's: ``parts`` = [(metrics of a share, {data_source: prompts in the
    share}), ...] in rank order; each ``<prefix>/<source>/acc/...`` mean is weighted by its share's prompts of that
    source."""
    filled = [p for p in parts if p[1]]
    if len(filled) == 1:  # one share (one rank): its metrics as they are
        return dict(filled[0][0])
    sources = sorted({src for _, counts in parts for src in counts}, key=len, reverse=True)
    totals: dict[str, list[float]] = {}
    for metrics, counts in parts:
        for key, value in metrics.items():
            src = next(s for s in sources if key.split("/", 1)[1].startswith(f"{s}/acc/"))
            acc = totals.setdefault(key, [0.0, 0.0])
            acc[0] += value * counts[src]
            acc[1] += counts[src]
    return {key: total / weight for key, (total, weight) in sorted(totals.items())}

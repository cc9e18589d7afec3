"""Validation: generate ``val_kwargs.n`` samples per validation prompt (DP over ranks), grade them against the
dataset labels on rank 0, and report ``val-core/<data_source>/acc/{mean@n, maj@n, pass@n}`` (``val-aux`` for
smaller k; ttrl/metrics.py defines them). Optionally dumps every generation to ``validation_data_dir/<step>.jsonl``.

Every rank returns the same metrics dict (broadcast from rank 0). No megatron, no vllm imports.
"""

from __future__ import annotations

from ttrl_megatron.config import ValKwargsConfig
from ttrl_megatron.rollout.base import SamplingConfig
from ttrl_megatron.ttrl import compute_validation_metrics, extract_answer, grade_many

from .dumps import generation_rows, write_jsonl
from .generation import VALIDATION, RolloutGroups, broadcast_object, generate_batch, sampling_for


def val_sampling(val: ValKwargsConfig, max_tokens: int) -> SamplingConfig:
    """Validation sampling (greedy when ``do_sample`` is False or the temperature is 0)."""
    temperature = val.temperature if val.do_sample else 0.0
    return SamplingConfig(temperature=temperature, top_p=val.top_p, top_k=val.top_k, max_tokens=max_tokens,
                          logprobs=False)


class Validator:
    def __init__(self, loader, val: ValKwargsConfig, *, engine, tokenizer, grader, seed: int, rank: int,
                 groups: RolloutGroups, response_length: int, dump_dir: str | None):
        self.loader, self.n = loader, val.n
        self.sampling = val_sampling(val, response_length)
        self.engine, self.tokenizer, self.grader = engine, tokenizer, grader
        self.seed, self.rank, self.groups = seed, rank, groups
        self.response_length, self.dump_dir = response_length, dump_dir

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
        metrics = None
        if self.rank == 0:
            metrics = compute_validation_metrics(responses, truths, sources, grader=self.grader)
            if self.dump_dir:
                self._dump(step, prompts, responses, truths)
        return broadcast_object(metrics)

    def _dump(self, step: int, prompts, responses, truths) -> None:
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat = [r for rs in responses for r in rs]
        flat_truths = [t for t, rs in zip(truths, responses) for _ in rs]
        answers = [extract_answer(r) for r in flat]
        pairs = [(a, str(t)) for a, t in zip(answers, flat_truths) if a is not None and t is not None]
        verdicts = iter(grade_many(pairs, self.grader))
        scores = [float(next(verdicts)) if a is not None and t is not None else 0.0
                  for a, t in zip(answers, flat_truths)]
        write_jsonl(self.dump_dir, step, generation_rows(step, flat_prompts, flat, answers, [None] * len(flat),
                                                         flat_truths, scores))

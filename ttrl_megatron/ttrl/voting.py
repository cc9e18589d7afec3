"""Equivalence-aware majority voting over the sampled answers of a prompt (TTRL's pseudo label, arXiv 2504.16084).

Upstream TTRL (algorithms-semantics §2.3) counts sympy-canonical strings, so ``0.5`` and ``\\frac{1}{2}`` (or ``x=5``
and ``5``) are different votes and a true majority can lose (PLATFORM.md saw 5 of 32 prompts mislabeled). Here answers
that grade equal form one candidate:

1. extract each response's answer (``answers.response_answer``: the last box, or the list of boxes of a final run
   such as ``\\boxed{1} and \\boxed{-2}``, which then votes as one list; with ``extraction="any"`` also unboxed
   conclusions); responses without one take no part in clustering;
2. distinct answers (by normalized form), in order of first appearance, join the first existing cluster whose
   representative (its first member) they grade equal to (``grade(later, representative)``); otherwise they open a
   new cluster. Grading is not always transitive, so this greedy rule is what makes the result well defined;
3. the winner is the largest cluster; a tie goes to the cluster whose first member appears earliest (upstream's
   ``Counter.most_common`` also breaks ties by first occurrence);
4. label = the extracted answer string of the earliest response in the winning cluster;
   ratio = winning cluster size / number of responses (responses without an answer count in the denominator);
   no answer anywhere -> (None, 0.0).

Answers that grade equal are one vote, so the vote uses exactly the equivalence of the rewards (``grading.py``).
``vote_many`` grades all prompts' undecided answer pairs in one batch on a ``GradingPool`` (parallel, deduplicated).
Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .answers import response_answer
from .extract import check_extraction
from .normalize import normalize_answer
from .score import Grader, grade_many

__all__ = ["Grader", "Vote", "grade_many", "majority_vote", "vote_many"]


@dataclass
class Vote:
    """One prompt's vote. Lists are per response, in input order."""

    label: str | None
    ratio: float
    answers: list[str | None]
    cluster_of: list[int]  # cluster id per response, -1 when it has no answer
    cluster_sizes: list[int] = field(default_factory=list)
    winner: int = -1  # cluster id of the label, -1 when there is no answer at all

    @property
    def agrees(self) -> list[bool]:
        """Per response: is its answer in the winning cluster (the majority reward before regrading)."""
        return [c == self.winner and c >= 0 for c in self.cluster_of]


def _distinct(answers: list[str | None]) -> tuple[list[str], list[int]]:
    """Distinct answers by normalized form (first raw spelling kept), and each response's distinct index (-1: none)."""
    first: dict[tuple[str, bool], int] = {}
    reps: list[str] = []
    index: list[int] = []
    for a in answers:
        if a is None:
            index.append(-1)
            continue
        key = tuple(normalize_answer(a))
        if key not in first:
            first[key] = len(reps)
            reps.append(a)
        index.append(first[key])
    return reps, index


def _cluster(n_distinct: int, equal) -> list[int]:
    """Greedy clustering of distinct answers 0..n-1 (first-appearance order): cluster id per distinct answer."""
    heads: list[int] = []
    cluster: list[int] = []
    for j in range(n_distinct):
        for cid, head in enumerate(heads):
            if equal(j, head):
                cluster.append(cid)
                break
        else:
            cluster.append(len(heads))
            heads.append(j)
    return cluster


def vote_many(responses_per_prompt: Sequence[Sequence[str | None]], grader: Grader | None = None,
              timeout_s: float | None = None, extraction: str = "boxed") -> list[Vote]:
    """Vote every prompt; all undecided (later, earlier) answer pairs of all prompts are graded in one batch.
    ``extraction``: how a response's answer is found (``ttrl.answer_extraction``: ``boxed`` | ``any``)."""
    check_extraction(extraction)
    prepared = []
    pairs: list[tuple[str, str]] = []
    for responses in responses_per_prompt:
        answers = [response_answer(r, extraction) if isinstance(r, str) else None for r in responses]
        reps, index = _distinct(answers)
        base = len(pairs)
        pairs += [(reps[j], reps[i]) for j in range(len(reps)) for i in range(j)]
        prepared.append((answers, reps, index, base))
    verdicts = grade_many(pairs, grader, timeout_s) if pairs else []

    votes = []
    for answers, reps, index, base in prepared:
        # pair (j, i) with i < j sits at base + j*(j-1)/2 + i
        cluster = _cluster(len(reps), lambda j, i, b=base: verdicts[b + j * (j - 1) // 2 + i])
        cluster_of = [cluster[d] if d >= 0 else -1 for d in index]
        sizes = [0] * (max(cluster) + 1 if cluster else 0)
        for c in cluster_of:
            if c >= 0:
                sizes[c] += 1
        if not sizes:
            votes.append(Vote(None, 0.0, answers, cluster_of, [], -1))
            continue
        winner = max(range(len(sizes)), key=lambda c: (sizes[c], -c))  # tie -> earliest cluster
        label = answers[cluster_of.index(winner)]
        votes.append(Vote(label, sizes[winner] / len(answers), answers, cluster_of, sizes, winner))
    return votes


def majority_vote(responses: Sequence[str | None], grader: Grader | None = None,
                  timeout_s: float | None = None, extraction: str = "boxed") -> tuple[str | None, float]:
    """(label, ratio) of one prompt's responses; see the module docstring for the exact rules."""
    vote = vote_many([responses], grader, timeout_s, extraction)[0]
    return vote.label, vote.ratio

"""Deterministic, resumable batch sampler over prompt indices. numpy only (no torch, no infrastructure).

Epoch e visits the items in the order `permutation(seed, e)` (or 0..N-1 without shuffle), in batches of `batch_size`.
`state_dict()` is (epoch, position = batches already handed out in that epoch) plus the settings it depends on, so a
resumed run sees exactly the batches the interrupted run would have seen. Every rank builds the same sampler and
gets the same prompt batch; splitting rows over data-parallel ranks happens later, on rollouts.
"""

import numpy as np


class ResumableBatchSampler:
    def __init__(self, num_items: int, batch_size: int, *, shuffle: bool = True, seed: int = 1,
                 drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if num_items < 1 or (drop_last and num_items < batch_size):
            raise ValueError(f"the dataset has {num_items} prompts, fewer than one batch of {batch_size} "
                             f"(data.train_batch_size); lower it or add data")
        self.num_items, self.batch_size = num_items, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The visiting order of epoch `epoch` (a pure function of seed and epoch)."""
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def _batch(self, epoch: int, position: int) -> list[int]:
        start = position * self.batch_size
        return [int(i) for i in self.epoch_order(epoch)[start:start + self.batch_size]]

    def next_batch(self) -> list[int]:
        """The next batch of indices, moving on to the next epoch when the current one is used up."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        batch = self._batch(self.epoch, self.position)
        self.position += 1
        return batch

    def __iter__(self):
        """The remaining batches of the current epoch; afterwards the sampler stands at the start of the next one."""
        while self.position < self.batches_per_epoch:
            yield self.next_batch()
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_items": self.num_items,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; refuses a state written with other data or batch settings."""
        for key in ("num_items", "batch_size", "shuffle", "seed", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state was saved with {key}={state[key]!r} but this run has "
                                 f"{getattr(self, key)!r}; resume with the same data and data.* settings")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

"""Prompt loaders: a PromptDataset + ResumableBatchSampler -> collated batches, with a resumable state.

Torch only (via dataset.py). `build_train_loader` follows data.{train_batch_size, shuffle, seed, drop_last};
`build_val_loader` walks the validation set in order, data.val_batch_size prompts at a time (null = all at once).
"""

from ttrl_megatron.config import DataConfig

from .dataset import PromptDataset, collate_prompts
from .records import DataError
from .sampler import ResumableBatchSampler


class PromptLoader:
    def __init__(self, dataset: PromptDataset, sampler: ResumableBatchSampler):
        self.dataset, self.sampler = dataset, sampler

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def _collate(self, indices: list[int]) -> dict:
        return collate_prompts([self.dataset[i] for i in indices])

    def next_batch(self) -> dict:
        """The next collated batch (see collate_prompts), rolling over epochs."""
        return self._collate(self.sampler.next_batch())

    def __iter__(self):
        """The remaining collated batches of the current epoch."""
        for indices in self.sampler:
            yield self._collate(indices)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def build_train_loader(dataset: PromptDataset, cfg: DataConfig) -> PromptLoader:
    try:
        sampler = ResumableBatchSampler(len(dataset), cfg.train_batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
                                        drop_last=cfg.drop_last)
    except ValueError as exc:  # too few prompts for one batch: a data problem, named with its files
        raise DataError(f"data.train_files={cfg.train_files}: {exc}") from None
    return PromptLoader(dataset, sampler)


def build_val_loader(dataset: PromptDataset, cfg: DataConfig) -> PromptLoader:
    size = cfg.val_batch_size or len(dataset)
    return PromptLoader(dataset, ResumableBatchSampler(len(dataset), size, shuffle=False, drop_last=False))

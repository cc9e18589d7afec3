"""The batch container that carries one step's data between phases (verl's ``DataProto``, same name and verbs).

A ``DataProto`` holds
  - ``batch``: named tensors that share the leading (batch) dimension ``B``, e.g. ``input_ids [B, T]``;
  - ``non_tensor_batch``: named per-row Python objects as numpy object arrays of length ``B`` (prompts, answers, uids,
    ``reward_model`` dicts, ``extra_info``);
  - ``meta_info``: a plain dict for the whole batch (temperature, global token counts, ...), shallow-copied by every
    operation, never split.

Every operation returns a new container; tensors are shared where slicing allows (torch views), never modified in place.
Mismatched batch sizes and missing keys raise ``BatchError`` naming the key. Imports only torch and numpy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["BatchError", "DataProto", "to_object_array"]


class BatchError(ValueError):
    """A batch operation got inconsistent input (batch sizes, keys, indices)."""


def to_object_array(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Return a 1-D numpy object array holding ``values`` one per row (dicts and lists stay whole objects)."""
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1:
        return values
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _normalize_index(index: Any, length: int) -> torch.Tensor | slice:
    """Turn an int/slice/list/numpy/tensor/bool-mask index into a slice or a 1-D int64 tensor of row ids."""
    if isinstance(index, slice):
        return index
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -length <= i < length:
            raise BatchError(f"row index {i} out of range for a batch of {length} rows")
        return torch.tensor([i % length], dtype=torch.long)
    idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
    if idx.dtype == torch.bool:
        if idx.shape != (length,):
            raise BatchError(f"boolean mask has shape {tuple(idx.shape)}, expected ({length},)")
        return idx.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if idx.dtype.is_floating_point or idx.dim() != 1:
        raise BatchError(f"index must be a 1-D integer or boolean sequence, got dtype {idx.dtype} shape {tuple(idx.shape)}")
    idx = idx.to(torch.long)
    if int(idx.max()) >= length or int(idx.min()) < -length:
        raise BatchError(f"row index out of range for a batch of {length} rows: {idx.tolist()[:8]}...")
    return idx % length


@dataclass
class DataProto:
    """Tensors + per-row objects + meta info with one batch dimension. See the module docstring."""

    batch: dict[str, torch.Tensor] = field(default_factory=dict)
    non_tensor_batch: dict[str, np.ndarray] = field(default_factory=dict)
    meta_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.non_tensor_batch = {k: to_object_array(v) for k, v in self.non_tensor_batch.items()}
        self.check_consistency()

    # ------------------------------------------------------------------ construction and checks
    @classmethod
    def from_dict(
        cls,
        tensors: Mapping[str, torch.Tensor] | None = None,
        non_tensors: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
        meta_info: Mapping[str, Any] | None = None,
    ) -> "DataProto":
        return cls(dict(tensors or {}), dict(non_tensors or {}), dict(meta_info or {}))

    def check_consistency(self) -> None:
        """Every tensor and every object array must have the same leading size; names the first key that differs."""
        sizes: list[tuple[str, int]] = []
        for k, t in self.batch.items():
            if not isinstance(t, torch.Tensor):
                raise BatchError(f"batch['{k}'] is a {type(t).__name__}, expected a torch.Tensor (put objects in non_tensor_batch)")
            if t.dim() == 0:
                raise BatchError(f"batch['{k}'] is a scalar tensor; tensors need a leading batch dimension (put scalars in meta_info)")
            sizes.append((f"batch['{k}']", t.shape[0]))
        for k, a in self.non_tensor_batch.items():
            if a.ndim != 1:
                raise BatchError(f"non_tensor_batch['{k}'] must be 1-D (one object per row), got shape {a.shape}")
            sizes.append((f"non_tensor_batch['{k}']", a.shape[0]))
        if sizes:
            first_key, first = sizes[0]
            for key, n in sizes[1:]:
                if n != first:
                    raise BatchError(f"batch size mismatch: {key} has {n} rows but {first_key} has {first}")

    def __len__(self) -> int:
        for t in self.batch.values():
            return t.shape[0]
        for a in self.non_tensor_batch.values():
            return a.shape[0]
        return 0

    def keys(self) -> list[str]:
        return [*self.batch.keys(), *self.non_tensor_batch.keys()]

    def __contains__(self, key: str) -> bool:
        return key in self.batch or key in self.non_tensor_batch

    def _missing(self, key: str, where: str) -> BatchError:
        have = sorted(self.batch) if where == "batch" else sorted(self.non_tensor_batch)
        return BatchError(f"missing key '{key}' in {where} (present: {have})")

    def tensor(self, key: str) -> torch.Tensor:
        """``batch[key]`` with an error naming the key when it is absent."""
        if key not in self.batch:
            raise self._missing(key, "batch")
        return self.batch[key]

    def obj(self, key: str) -> np.ndarray:
        """``non_tensor_batch[key]`` with an error naming the key when it is absent."""
        if key not in self.non_tensor_batch:
            raise self._missing(key, "non_tensor_batch")
        return self.non_tensor_batch[key]

    # ------------------------------------------------------------------ row selection
    def __getitem__(self, index: Any) -> "DataProto":
        """Rows by int, slice, list/array/tensor of ints, or a boolean mask; always returns a ``DataProto``."""
        idx = _normalize_index(index, len(self))
        if isinstance(idx, slice):
            tensors = {k: v[idx] for k, v in self.batch.items()}
            objs = {k: v[idx] for k, v in self.non_tensor_batch.items()}
        else:
            np_idx = idx.numpy()
            tensors = {k: v.index_select(0, idx) for k, v in self.batch.items()}
            objs = {k: v[np_idx] for k, v in self.non_tensor_batch.items()}
        return DataProto(tensors, objs, dict(self.meta_info))

    def reorder(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> "DataProto":
        """Reorder rows IN PLACE by a permutation (verl semantics) and return self. Rejects non-permutations."""
        idx = _normalize_index(indices, len(self))
        if isinstance(idx, slice) or idx.numel() != len(self) or torch.unique(idx).numel() != len(self):
            raise BatchError(f"reorder needs a permutation of range({len(self)})")
        out = self[idx]
        self.batch, self.non_tensor_batch = out.batch, out.non_tensor_batch
        return self

    def select(
        self,
        batch_keys: Iterable[str] | None = None,
        non_tensor_batch_keys: Iterable[str] | None = None,
        meta_info_keys: Iterable[str] | None = None,
    ) -> "DataProto":
        """A container with only the named keys (None keeps all of that kind). Missing keys raise, naming the key."""
        bk = list(self.batch) if batch_keys is None else list(batch_keys)
        nk = list(self.non_tensor_batch) if non_tensor_batch_keys is None else list(non_tensor_batch_keys)
        mk = list(self.meta_info) if meta_info_keys is None else list(meta_info_keys)
        for k in mk:
            if k not in self.meta_info:
                raise BatchError(f"missing key '{k}' in meta_info (present: {sorted(self.meta_info)})")
        return DataProto(
            {k: self.tensor(k) for k in bk}, {k: self.obj(k) for k in nk}, {k: self.meta_info[k] for k in mk}
        )

    def pop(
        self, batch_keys: Iterable[str] = (), non_tensor_batch_keys: Iterable[str] = (), meta_info_keys: Iterable[str] = ()
    ) -> "DataProto":
        """Remove the named keys from this container and return them as a new one (verl semantics)."""
        out = self.select(batch_keys, non_tensor_batch_keys, meta_info_keys)
        for k in out.batch:
            del self.batch[k]
        for k in out.non_tensor_batch:
            del self.non_tensor_batch[k]
        for k in out.meta_info:
            del self.meta_info[k]
        return out

    # ------------------------------------------------------------------ shape changes
    def repeat(self, repeat_times: int, interleave: bool = True) -> "DataProto":
        """Repeat every row ``repeat_times`` times.

        interleave=True gives ``[a, a, b, b]`` (each prompt's copies contiguous, what rollout grouping expects);
        interleave=False gives ``[a, b, a, b]``. Object rows are deep-copied so a mutation of one copy (e.g. the
        ``reward_model`` dict) can never leak into the others, a classic upstream TTRL pitfall.
        """
        if not isinstance(repeat_times, int) or repeat_times < 1:
            raise BatchError(f"repeat_times must be a positive int, got {repeat_times!r}")
        n = len(self)
        if interleave:
            idx = torch.arange(n).repeat_interleave(repeat_times)
        else:
            idx = torch.arange(n).repeat(repeat_times)
        np_idx = idx.numpy()
        tensors = {k: v.index_select(0, idx) for k, v in self.batch.items()}
        objs = {k: to_object_array([copy.deepcopy(v[i]) for i in np_idx]) for k, v in self.non_tensor_batch.items()}
        return DataProto(tensors, objs, dict(self.meta_info))

    def split(self, split_size: int) -> list["DataProto"]:
        """Consecutive chunks of ``split_size`` rows (the last may be shorter)."""
        if not isinstance(split_size, int) or split_size < 1:
            raise BatchError(f"split_size must be a positive int, got {split_size!r}")
        return [self[i : i + split_size] for i in range(0, len(self), split_size)]

    def chunk(self, chunks: int) -> list["DataProto"]:
        """Exactly ``chunks`` equal parts; the batch size must divide evenly (as across DP ranks)."""
        n = len(self)
        if not isinstance(chunks, int) or chunks < 1:
            raise BatchError(f"chunks must be a positive int, got {chunks!r}")
        if n % chunks:
            raise BatchError(f"cannot chunk a batch of {n} rows into {chunks} equal parts ({n} % {chunks} != 0)")
        return self.split(n // chunks) if n else [self[0:0] for _ in range(chunks)]

    @staticmethod
    def concat(parts: Sequence["DataProto"]) -> "DataProto":
        """Concatenate rows of containers with identical keys; meta_info is taken from the first part."""
        if not parts:
            raise BatchError("concat needs at least one DataProto")
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            if set(p.batch) != set(first.batch) or set(p.non_tensor_batch) != set(first.non_tensor_batch):
                diff = (set(p.batch) ^ set(first.batch)) | (set(p.non_tensor_batch) ^ set(first.non_tensor_batch))
                raise BatchError(f"concat: part {i} has different keys than part 0 (differing: {sorted(diff)})")
        tensors = {k: torch.cat([p.batch[k] for p in parts], dim=0) for k in first.batch}
        objs = {k: np.concatenate([p.non_tensor_batch[k] for p in parts]) for k in first.non_tensor_batch}
        return DataProto(tensors, objs, dict(first.meta_info))

    def union(self, other: "DataProto") -> "DataProto":
        """Merge keys of two containers with the same rows. A key present in both must hold equal values."""
        if len(self) != len(other) and self.keys() and other.keys():
            raise BatchError(f"union: batch sizes differ ({len(self)} vs {len(other)})")
        tensors = dict(self.batch)
        for k, v in other.batch.items():
            if k in tensors and not (tensors[k].shape == v.shape and torch.equal(tensors[k], v)):
                raise BatchError(f"union: key '{k}' is present in both batches with different values")
            tensors[k] = v
        objs = dict(self.non_tensor_batch)
        for k, v in other.non_tensor_batch.items():
            if k in objs and not _objects_equal(objs[k], v):
                raise BatchError(f"union: key '{k}' is present in both non_tensor_batches with different values")
            objs[k] = v
        meta = dict(self.meta_info)
        for k, v in other.meta_info.items():
            if k in meta and meta[k] != v:
                raise BatchError(f"union: meta_info['{k}'] differs ({meta[k]!r} vs {v!r})")
            meta[k] = v
        return DataProto(tensors, objs, meta)

    # ------------------------------------------------------------------ conveniences
    def to(self, device: torch.device | str) -> "DataProto":
        return DataProto({k: v.to(device) for k, v in self.batch.items()}, dict(self.non_tensor_batch), dict(self.meta_info))

    def __repr__(self) -> str:
        tens = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in self.batch.items())
        objs = ", ".join(self.non_tensor_batch)
        return f"DataProto(len={len(self)}, batch={{{tens}}}, non_tensor_batch=[{objs}], meta_info={sorted(self.meta_info)})"


def _objects_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    for x, y in zip(a, b):
        try:
            same = x == y
            if isinstance(same, np.ndarray):
                same = bool(same.all())
            if not same:
                return False
        except Exception:  # objects without a usable __eq__: fall back to identity
            if x is not y:
                return False
    return True

"""Methods injected into every vLLM worker: `LLM(worker_extension_cls=<this module>.WeightReloadExtension)`.

vLLM mixes this class into its worker class, so `self` is the worker; the engine reaches these methods with
`llm.collective_rpc("<method>", args=...)`. Besides the weight reload: seeding the sampler's generator for one
`generate` call (and restoring it), and reporting the worker's device.

Why the worker's `reload_weights` and not `model.load_weights`: on CPU the linear weights are repacked after
loading and replaced by empty placeholders, so a plain `load_weights` fails after start-up; `reload_weights`
(checkpoint format) restores each layer, loads HF-named tensors (vLLM fuses q/k/v and gate/up itself) and re-runs
the post-load processing. Callers must send whole modules per call (see rollout/weights.py).

Must not import vllm at module level (it is imported by vLLM itself inside the worker); no validation here: the
engine validates before sending, because a reload that fails half-way is not rolled back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch


def _sampler_generator(device: torch.device) -> torch.Generator:
    """The generator vLLM's sampler draws from when no request has its own: the device's default generator
    (`q.exponential_()` on GPU, `torch.randint` of the CPU sampler)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class WeightReloadExtension:
    """Worker-side half of `VLLMRolloutEngine.update_weights` and of its seeded sampling."""

    def ttrl_seed_sampler(self, seed: int) -> None:
        """Seed the sampler's generator on this worker's device, keeping the previous state here for
        `ttrl_restore_sampler` (kept in the worker, not returned: a worker in another process would get the state
        back through the RPC's serialization as a list, not a tensor).

        In-process workers share the caller's generators: restoring keeps the caller's RNG stream untouched."""
        generator = _sampler_generator(self.device)
        self._ttrl_sampler_state = generator.get_state()
        generator.manual_seed(int(seed))

    def ttrl_placement(self) -> dict:
        """Where this worker runs: its device (external_launcher: `cuda:LOCAL_RANK`; the uni executor would say
        `cuda:0` on every rank), the local rank it was given, its global rank, and its process id."""
        return {"device": str(self.device), "local_rank": int(self.local_rank), "rank": int(self.rank),
                "pid": os.getpid()}

    def ttrl_restore_sampler(self) -> None:
        """Put back the generator state `ttrl_seed_sampler` kept."""
        state = getattr(self, "_ttrl_sampler_state", None)
        if state is not None:
            _sampler_generator(self.device).set_state(state)
            self._ttrl_sampler_state = None

    def ttrl_reload_weights(self, weights: Iterable[tuple[str, torch.Tensor]] | bytes) -> int:
        """Load HF-named tensors in place; `weights` is an iterable (in-process) or a safetensors blob (other process).

        Returns the number of tensors handed to vLLM.
        """
        if isinstance(weights, (bytes, bytearray)):
            from safetensors.torch import load as load_safetensors

            weights = load_safetensors(bytes(weights)).items()
        names: list[str] = []

        def recorded():
            for name, tensor in weights:
                names.append(name)
                yield name, tensor

        self.reload_weights(weights_iterator=recorded(), is_checkpoint_format=True)
        if "model.embed_tokens.weight" in names:
            self._ttrl_retie_output_layer()
        return len(names)

    def ttrl_reload_shared(self, handle: dict, entries: list) -> int:
        """Load one bucket from the sender's shared buffer (rollout/shared_buckets.py) in place; returns the number of
        tensors. Refuses (after loading) if a parameter of the model now lives inside the buffer: the sender
        overwrites it with the next bucket, so the weights would silently change."""
        from ttrl_megatron.rollout.shared_buckets import MappedBucket

        bucket = MappedBucket(handle, entries)
        with bucket as pairs:
            count = self.ttrl_reload_weights(pairs)
            kept = bucket.aliased(self.model_runner.get_model().named_parameters())
            del pairs
        if kept:
            raise RuntimeError(f"ttrl_reload_shared: parameters {kept[:3]} alias the shared weight bucket instead of "
                               "holding a copy (use weight_transport='bytes' with this vLLM)")
        return count

    def _ttrl_retie_output_layer(self) -> None:
        """Point a tied lm_head at the reloaded embedding again.

        The reload materializes a NEW embedding parameter, but a tied `lm_head` still holds the old one (and on CPU
        a GEMM prepacked from it), so the logits would silently keep the old output weights (seen: log-prob error
        1.3 after updating only embed_tokens of a tied Qwen2).
        """
        hf_config = self.model_runner.model_config.hf_config
        if not getattr(hf_config, "tie_word_embeddings", False):
            return
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if lm_head is None or embed is None:
            raise RuntimeError(
                f"{type(model).__name__}: tied embeddings but no model.lm_head / model.model.embed_tokens to re-tie"
            )
        lm_head.weight = embed.weight
        lm_head.quant_method.process_weights_after_loading(lm_head)  # CPU: rebuild the prepacked logits GEMM

"""Peak extra host memory of ``MegatronActor.compute_log_prob`` at the real Qwen2.5 vocabulary (151,936), against the
size of one fp32 ``[tokens, vocab]`` logits tensor of the micro-batch, next to the previous path, in one run.

- ``chunked`` (the engine now): the model hands back hidden states, log-probs (and entropy) are formed at the
  response positions only, ``logprob_chunk_size`` positions at a time (megatron/logprobs.py), packed micro-batch.
- ``previous`` (reimplemented here as the baseline): the model's full logits ``[b, T, V]``, sliced to the response
  positions, then ``logprobs.unchunked_logprobs`` (an fp32 copy / temperature, megatron's vocab-parallel cross
  entropy on a clone, the vocab-parallel entropy's same-size temporaries): what ``compute_log_prob`` did before.

Both run on the same tiny-hidden model (hidden 64, one layer: the decoder's own memory is small next to the vocab
and is included, as is everything ``compute_log_prob`` allocates) and the same micro-batch (all tokens real).
Memory is measured two independent ways, each around one call after a warm-up call with the same shapes:
``storage`` = a TorchDispatchMode that books every tensor storage created during the call and drops it when it is
freed (peak of live bytes; deterministic, checked on a hand-made sequence first), and ``rss`` = the process's peak
resident memory (Linux VmHWM, reset through /proc/self/clear_refs) minus its resident memory before the call.
``peak_over_logits`` = storage peak of the chunked path WITH entropy / bytes of one fp32 ``[b * T, V]`` tensor
(goal <= 0.5; the larger of the with/without-entropy figures).

    OMP_NUM_THREADS=1 python bench/bench_logprob_memory.py [--rows 1 --prompt 512 --response 1536]

Last line: ``RESULT {json}``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.multiprocessing.reductions import StorageWeakRef

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = float(1 << 30)


class LiveStorage(TorchDispatchMode):
    """Peak bytes of tensor storages created while active and still alive (views share their base's storage)."""

    def __init__(self):
        super().__init__()
        self.live = {}
        self.current = self.peak = 0

    def _sweep(self):
        for ref in [r for r in self.live if r.expired()]:
            self.current -= self.live.pop(ref)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref not in self.live:
                    self.live[ref] = storage.nbytes()
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def measure(fn):
    """(result, storage peak bytes, rss peak extra bytes or None, seconds) of one call of ``fn``."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        rss_before = _status("VmRSS")
    except OSError:
        rss_before = None
    counter = LiveStorage()
    t0 = time.perf_counter()
    with counter:
        out = fn()
    seconds = time.perf_counter() - t0
    rss = _status("VmHWM") - rss_before if rss_before is not None else None
    return out, counter.peak, rss, seconds


def self_check():
    """The counter on a hand-made sequence whose peak is exactly 2 MiB (frees seen, views not double-counted)."""
    mib = 1 << 20

    def seq():
        a = torch.ones(mib // 4)  # 1 MiB
        b = a * 2  # 2 MiB alive
        del a
        c = b + 1  # 2 MiB alive (a freed before c exists)
        del b
        view = c[:10]  # a view: no new storage
        return float(view.sum())  # 1 MiB + a 4-byte scalar

    _, peak, _, _ = measure(seq)
    assert peak == 2 * mib, f"storage counter self-check: peak {peak} != {2 * mib}"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1, help="rows of the micro-batch")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--response", type=int, default=1536)
    ap.add_argument("--chunk", type=int, default=None, help="logprob_chunk_size; default: the config's default")
    return ap.parse_args()


def make_model_dir(args, path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      max_position_embeddings=args.prompt + args.response)
    Qwen2ForCausalLM(cfg).float().save_pretrained(path, safe_serialization=True)


def main():
    args = parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    from ttrl_megatron.distributed import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    from ttrl_megatron.config import ModelConfig
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.actor import LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.build import build_model_chunks
    from ttrl_megatron.megatron.logprobs import unchunked_logprobs
    from ttrl_megatron.megatron.model import left_padded_inputs
    from ttrl_megatron.megatron.parallel import destroy_distributed, init_distributed
    from ttrl_megatron.protocol import DataProto

    chunk = args.chunk or ModelConfig().logprob_chunk_size
    init_distributed(ParallelLayout(1, 1, 1), seed=1)
    self_check()
    b, p, r = args.rows, args.prompt, args.response
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (b, p + r), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, p + r, dtype=torch.long), "responses": ids[:, p:]}
    tokens = b * (p + r)
    logits_bytes = tokens * args.vocab * 4
    with tempfile.TemporaryDirectory() as tmp:
        make_model_dir(args, tmp)
        actor = MegatronActor(build_model_chunks(tmp, "float32"),
                              LogProbConfig(micro_batch_size_per_gpu=b, temperature=1.0, chunk_size=chunk))
    model = actor.engine.model[0]

    def chunked(entropy):
        return lambda: actor.compute_log_prob(DataProto(dict(batch)), calculate_entropy=entropy)

    def previous(entropy):
        def run():
            with torch.no_grad():
                pos, mask = left_padded_inputs(batch["attention_mask"])
                logits = model(batch["input_ids"], pos, mask)
                return unchunked_logprobs(logits[:, p - 1: p + r - 1], batch["responses"], args.vocab, 1.0, entropy)
        return run

    figures, results = {}, {}
    for name, make in (("chunked", chunked), ("previous", previous)):
        for entropy in (False, True):
            fn = make(entropy)
            fn()  # warm-up: megatron's persistent buffers (attention scores) exist before the measured call
            out, peak, rss, seconds = measure(fn)
            key = f"{name}{'_entropy' if entropy else ''}"
            results[key] = out
            figures[key] = {"storage_gib": round(peak / GIB, 3),
                            "rss_gib": None if rss is None else round(rss / GIB, 3),
                            "over_logits": round(peak / logits_bytes, 3), "seconds": round(seconds, 2)}
            print(key, figures[key], flush=True)
            del out, fn
    lp_err = float((results["chunked"][0] - results["previous"][0]).abs().max())
    ent_err = float((results["chunked_entropy"][1] - results["previous_entropy"][1]).abs().max())
    destroy_distributed()
    result = {
        "metric": "peak extra host memory of compute_log_prob / one fp32 [tokens, vocab] logits tensor",
        "peak_over_logits": max(figures["chunked"]["over_logits"], figures["chunked_entropy"]["over_logits"]),
        "peak_over_logits_no_entropy": figures["chunked"]["over_logits"],
        "peak_over_logits_entropy": figures["chunked_entropy"]["over_logits"],
        "previous_peak_over_logits_no_entropy": figures["previous"]["over_logits"],
        "previous_peak_over_logits_entropy": figures["previous_entropy"]["over_logits"],
        "logits_gib": round(logits_bytes / GIB, 3), "figures": figures,
        "max_abs_logprob_diff": lp_err, "max_abs_entropy_diff": ent_err,
        "rows": b, "prompt": p, "response": r, "tokens": tokens, "vocab": args.vocab, "hidden": args.hidden,
        "logprob_chunk_size": chunk, "dtype": "float32", "device": "cpu", "goal": "peak_over_logits <= 0.5",
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

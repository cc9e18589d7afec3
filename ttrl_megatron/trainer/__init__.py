"""The TTRL training loop: setup / train_step / fit (trainer.py), with its helpers (batch assembly, DP rollout,
rewards, balancing, metrics, validation, checkpoints, run outputs). Import ``TTRLTrainer`` from
``ttrl_megatron.trainer.trainer`` (importing this package does not pull megatron or vllm)."""

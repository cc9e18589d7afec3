"""Performance figures computed from the model and the clock: training FLOPs and each GPU's peak (flops.py), the
inputs of the trainer's ``perf/mfu/actor``. Pure python: no torch, no project infrastructure."""

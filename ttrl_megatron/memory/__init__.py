"""GPU memory of a colocated step: the plan (formulas.py, plan.py: pure python, used by ``validate()`` and
``python -m ttrl_megatron.plan_memory``), the per-phase recorder the trainer's metrics use (recorder.py), and the
tooling that checks the plan against what the engine allocates (counter.py, measure.py)."""

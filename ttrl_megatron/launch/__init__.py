"""Launch recipes beyond plain ``torchrun`` / sbatch (scripts/launch/): ``nemo_run`` (optional extra ``nemo-run``).

Importing this package imports nothing heavy; ``ttrl_megatron.launch.nemo_run`` imports ``nemo_run`` only when an
executor is built.
"""

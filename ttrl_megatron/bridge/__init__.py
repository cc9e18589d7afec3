"""HF <-> Megatron weight bridge: the pure name/layout mapping (names.py, layouts.py); megatron-free on import."""

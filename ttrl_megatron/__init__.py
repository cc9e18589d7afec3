"""ttrl-megatron: test-time reinforcement learning (TTRL, arXiv 2504.16084) on a Megatron-core backend.

Megatron-core trains the actor/critic/reference; vLLM generates rollouts; the bridge streams weights between them.
Subpackages keep strict import boundaries (see tests/unit/test_import_boundaries.py).
"""

__version__ = "0.1.0"

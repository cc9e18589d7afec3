"""The only package that imports megatron.core: models, parallel state, CPU compatibility, engines.

Submodules are imported explicitly (``from ttrl_megatron.megatron.model import build_gpt_model``) so that importing
this package stays cheap and does not pull megatron.core by itself.
"""

"""Fixtures for data tests: the demo's character tokenizer, built once per session (a real HF tokenizer on disk)."""

import pytest


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory):
    from ttrl_megatron.data import build_char_tokenizer

    return build_char_tokenizer(tmp_path_factory.mktemp("char_tok"))


@pytest.fixture(scope="session")
def char_tokenizer(char_tokenizer_dir):
    from ttrl_megatron.data import load_tokenizer

    return load_tokenizer(char_tokenizer_dir)

"""The character tokenizer is a real HF tokenizer: AutoTokenizer loads it from a directory and round-trips text."""

import json

from ttrl_megatron.data import ARITHMETIC_ALPHABET, SPECIAL_TOKENS, build_char_tokenizer, char_vocab, load_tokenizer


def test_vocab_listing():
    vocab = char_vocab()
    assert vocab[:4] == list(SPECIAL_TOKENS) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert "".join(vocab[4:]) == "0123456789+-*=\\boxed{}"  # the alphabet, each character once, in order
    assert len(vocab) == 4 + len(set(ARITHMETIC_ALPHABET)) == 26  # recipe's 25 + <unk>
    assert char_vocab("ab") == list(SPECIAL_TOKENS) + ["a", "b"]


def test_files_and_autotokenizer_round_trip(char_tokenizer_dir, char_tokenizer):
    from transformers import AutoTokenizer

    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in char_tokenizer_dir.iterdir()}
    cfg = json.loads((char_tokenizer_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(char_tokenizer_dir))
    vocab = char_vocab()
    assert len(tok) == len(vocab) and tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok("12+34=")["input_ids"]
    assert ids == [1] + [vocab.index(c) for c in "12+34="]  # BOS then one id per character
    answer = tok.encode("\\boxed{46}", add_special_tokens=False) + [tok.eos_token_id]
    assert len(answer) == 11 and tok.decode(answer, skip_special_tokens=True) == "\\boxed{46}"
    assert tok.decode(ids) == "<bos>12+34="
    assert tok.encode("1a", add_special_tokens=False) == [vocab.index("1"), 3]  # unknown char -> <unk>
    assert char_tokenizer.padding_side == "left"


def test_load_tokenizer_uses_eos_as_pad_when_missing(tmp_path):
    out = build_char_tokenizer(tmp_path, alphabet="0123")
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    del cfg["pad_token"]
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    (out / "special_tokens_map.json").unlink()
    tok = load_tokenizer(out)
    assert tok.pad_token_id == tok.eos_token_id == 2 and tok.padding_side == "left"

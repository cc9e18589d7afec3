"""Tokenizers: loading a model's HF tokenizer for RL, and building the demo's character-level tokenizer.

`build_char_tokenizer(out_dir)` writes a real HF fast tokenizer (`tokenizer.json` + `tokenizer_config.json`, built with
the `tokenizers` library: WordLevel vocabulary, one token per character) that `transformers.AutoTokenizer` and vLLM load
from a model directory. Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then the alphabet in order. Encoding adds BOS in front
(`add_special_tokens=True`); decoding concatenates characters. transformers is imported only inside load_tokenizer().
"""

import json
from pathlib import Path
from typing import Union

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3, in this order
ARITHMETIC_ALPHABET = "0123456789+-*=\\boxed{}"  # what the arithmetic task's prompts and `\boxed{N}` answers use


def char_vocab(alphabet: str = ARITHMETIC_ALPHABET) -> list[str]:
    """Tokens in id order: the special tokens, then each distinct character of `alphabet` in first-seen order."""
    chars = list(dict.fromkeys(alphabet))
    clash = [c for c in chars if c in SPECIAL_TOKENS]
    if clash:
        raise ValueError(f"alphabet characters {clash} collide with special tokens")
    return list(SPECIAL_TOKENS) + chars


def build_char_tokenizer(out_dir: Union[str, Path], alphabet: str = ARITHMETIC_ALPHABET,
                         model_max_length: int = 64) -> Path:
    """Write a character-level HF tokenizer into `out_dir` (created); returns `out_dir`.

    Files: tokenizer.json (the `tokenizers` model), tokenizer_config.json (class PreTrainedTokenizerFast, special
    tokens, left padding), special_tokens_map.json. Characters outside the alphabet encode to <unk>.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(char_vocab(alphabet))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character is a word
    tok.decoder = decoders.Fuse()  # join tokens without spaces
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", vocab["<bos>"])])
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # marks them special (skip_special_tokens drops them); ids unchanged
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    specials = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "padding_side": "left", "clean_up_tokenization_spaces": False, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out


def load_tokenizer(path: Union[str, Path], trust_remote_code: bool = False):
    """The HF tokenizer at `path`, set up for RL: left padding (prompts end where generation starts) and a pad token
    (the EOS token when the tokenizer has none, as verl does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError(f"{path}: tokenizer has neither a pad nor an eos token; add one to tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok

"""Prompt rendering: chat messages or a plain string -> the text the model sees. No torch, no infrastructure.

`auto` uses the tokenizer's chat template when it has one (instruct models) and the plain template otherwise (base
models, the demo's character tokenizer). The plain template joins the message contents with blank lines; a plain
string prompt is used as is.
"""

from typing import Union

from .records import Messages

TEMPLATES = ("auto", "chat", "plain")


def has_chat_template(tokenizer) -> bool:
    """Whether the (HF) tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_plain(prompt: Union[Messages, str]) -> str:
    """Plain template: a string as is; messages' contents in order, separated by a blank line."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt)


def render_prompt(prompt: Union[Messages, str], tokenizer, template: str = "auto") -> tuple[str, bool]:
    """Render `prompt` to text. Returns (text, add_special_tokens): a chat template already holds the special tokens
    it wants, so the text is then tokenized without adding BOS again; plain text gets the tokenizer's own specials."""
    if template not in TEMPLATES:
        raise ValueError(f"data.prompt_template={template!r}: use one of {', '.join(TEMPLATES)}")
    use_chat = template == "chat" or (template == "auto" and has_chat_template(tokenizer))
    if not use_chat:
        return render_plain(prompt), True
    if not has_chat_template(tokenizer):
        raise ValueError("data.prompt_template=chat but the tokenizer has no chat template; use auto or plain")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, False

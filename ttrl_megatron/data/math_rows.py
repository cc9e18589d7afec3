"""Question/answer pairs (e.g. GSM8K JSONL) -> verl-format prompt rows. Stdlib only; used by scripts/preprocess_math.py.

The prompt is one user message: the question, a space, and an instruction asking for a \\boxed{} answer (configurable).
The ground truth is the final answer: by default the text after GSM8K's `####`, with thousands separators removed.
"""

import re
from typing import Optional

from .records import DataError

DEFAULT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
GSM8K_ANSWER_REGEX = r"####\s*(.+?)\s*$"


def final_answer(answer_text: str, answer_regex: Optional[str] = GSM8K_ANSWER_REGEX) -> Optional[str]:
    """The final answer inside `answer_text`: the regex's first group (None if it does not match), commas dropped;
    answer_regex=None keeps the whole text (stripped)."""
    if answer_regex is None:
        return answer_text.strip()
    match = re.search(answer_regex, answer_text, flags=re.DOTALL)
    return match.group(1).replace(",", "").strip() if match else None


def qa_rows(pairs: list[dict], *, question_key: str = "question", answer_key: str = "answer",
            answer_regex: Optional[str] = GSM8K_ANSWER_REGEX, instruction: str = DEFAULT_INSTRUCTION,
            data_source: str = "gsm8k", split: str = "test", where: str = "<input>") -> list[dict]:
    """verl rows from dicts holding a question and an answer. Missing keys or unmatched answers raise DataError
    naming `where` and the row number."""
    rows = []
    for i, pair in enumerate(pairs):
        for key in (question_key, answer_key):
            if not isinstance(pair.get(key), (str, int, float)):
                raise DataError(f"{where}: row {i}: missing field '{key}' (set --question-key/--answer-key)")
        gt = final_answer(str(pair[answer_key]), answer_regex)
        if gt is None:
            raise DataError(f"{where}: row {i}: field '{answer_key}' does not match {answer_regex!r}")
        question = str(pair[question_key]).strip()
        content = f"{question} {instruction}" if instruction else question
        rows.append({"data_source": data_source, "prompt": [{"role": "user", "content": content}],
                     "ability": "math", "reward_model": {"ground_truth": gt, "style": "rule"},
                     "extra_info": {"index": i, "split": split, "question": question}})
    return rows

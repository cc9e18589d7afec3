#!/usr/bin/env python
"""Turn a JSONL of question/answer pairs into verl-format parquet/jsonl prompt rows for TTRL.

  python scripts/preprocess_math.py --input gsm8k_test.jsonl --output data/gsm8k/test.parquet
  python scripts/preprocess_math.py --input aime.jsonl --output data/aime/test.parquet \
      --question-key problem --answer-key answer --answer-regex none --data-source aime

Defaults fit GSM8K (`question`, `answer` with the final answer after `####`). The logic is
ttrl_megatron.data.math_rows.qa_rows; this file only parses arguments.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttrl_megatron.data.math_rows import DEFAULT_INSTRUCTION, GSM8K_ANSWER_REGEX, qa_rows  # noqa: E402
from ttrl_megatron.data.records import read_rows, write_rows  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="JSONL (or parquet) file of question/answer objects")
    ap.add_argument("--output", required=True, help="output .parquet or .jsonl")
    ap.add_argument("--question-key", default="question")
    ap.add_argument("--answer-key", default="answer")
    ap.add_argument("--answer-regex", default=GSM8K_ANSWER_REGEX,
                    help="regex whose first group is the final answer; 'none' = the whole answer field")
    ap.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="appended to each question ('' = none)")
    ap.add_argument("--data-source", default="gsm8k")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    regex = None if args.answer_regex.lower() == "none" else args.answer_regex
    rows = qa_rows(read_rows(args.input), question_key=args.question_key, answer_key=args.answer_key,
                   answer_regex=regex, instruction=args.instruction, data_source=args.data_source, split=args.split,
                   where=args.input)
    out = write_rows(rows, args.output)
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m ttrl_megatron.demo [options]`` (what scripts/demo.sh runs): the whole TTRL demo on CPU, offline.
``--help`` lists the options; ``--smoke`` is the few-question, 2-step version the tests run."""

from __future__ import annotations

import argparse
import sys

from .pipeline import LAYOUTS, DemoOptions, run
from .sft import SFTConfig


def parse(argv: list[str] | None) -> DemoOptions:
    d = DemoOptions()
    ap = argparse.ArgumentParser(prog="python -m ttrl_megatron.demo", description=__doc__)
    ap.add_argument("--run-dir", default=d.run_dir, help="where everything is written (default %(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed, help="TTRL seed (sampling, data order)")
    ap.add_argument("--steps", type=int, default=d.steps, help="TTRL steps (default %(default)s)")
    ap.add_argument("--test-freq", type=int, default=d.test_freq, help="validate every N steps")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default=d.layout, help="DP=2 or TP=2 Megatron layout")
    ap.add_argument("--n-test", type=int, default=d.n_test, help="held-out questions")
    ap.add_argument("--sft-steps", type=int, default=d.sft.steps, help="supervised steps of the tiny model")
    ap.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=d.dynamic_sampling,
                    help="DAPO dynamic sampling (default on): drop prompts whose 8 kept rollouts all agree, refill "
                         "from further prompt batches (at most 4 per step); --no-dynamic-sampling trains on every "
                         "prompt, results in ttrl_seed<S>_<layout>_plain")
    ap.add_argument("--smoke", action="store_true", help="tiny run for CI: 16 questions, 40 SFT steps, 2 TTRL steps")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the trainer (key=value)")
    args = ap.parse_args(argv)
    opts = DemoOptions(run_dir=args.run_dir, seed=args.seed, steps=args.steps, test_freq=args.test_freq,
                       layout=args.layout, n_test=args.n_test, sft=SFTConfig(steps=args.sft_steps),
                       dynamic_sampling=args.dynamic_sampling, overrides=list(args.overrides))
    if args.smoke:
        opts.n_test, opts.n_train, opts.steps, opts.test_freq = 16, 512, 2, 2
        opts.sft = SFTConfig(steps=40, batch_size=64)
        opts.overrides = ["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=8",
                          "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32", *opts.overrides]
    return opts


def main(argv: list[str] | None = None) -> int:
    summary = run(parse(argv))
    return 0 if summary.get("pass@1_after") is not None else 1


if __name__ == "__main__":
    sys.exit(main())

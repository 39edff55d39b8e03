"""Verified synthesis of harder problems than the seeds: 100 seed problems
with one-digit operands (configs/synth_arith_seeds.jsonl); held-out
problems with two two-digit operands, none of which the seeds contain.
SmolLM2-135M-Instruct proposes from 4 problems at a time (as in
configs/synth_arith.py). Only problems of the harder kind are kept
(`synth.pattern`), and each round shows the teacher what the round before
kept (`synth.show="latest"`): round 1 shows one-digit seeds and keeps the
few two-digit problems the teacher writes anyway; later rounds grow from
those. A small model trained from scratch is then fine-tuned on seeds +
synthesized and evaluated on the harder problems.

    python -m rankjax.launch --config configs/synth_arith_harder.py --workdir /tmp/harder
    # SFT on the seeds alone, same steps (the baseline):
    python -m rankjax.launch --config configs/synth_arith_harder.py --workdir /tmp/harder0 \\
        --config.synth.rounds=0
"""

import dataclasses
import os
import runpy

from rankjax.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> Config:
  base = runpy.run_path(os.path.join(HERE, "synth_arith.py"))["get_config"]()
  return dataclasses.replace(
      base, name="synth_arith_harder", pipeline=("synthesize", "sft", "eval"),
      data=dataclasses.replace(base.data, min_digits=2, max_digits=2),
      sft=dataclasses.replace(base.sft, steps=2000),
      synth=dataclasses.replace(base.synth, rounds=6, show="latest",
                                seed_path=os.path.join(HERE, "synth_arith_seeds.jsonl"),
                                pattern=r"[1-9][0-9][-+][1-9][0-9]="))

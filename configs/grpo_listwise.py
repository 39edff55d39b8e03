"""The default run with a listwise term in GRPO: SFT on imperfect
demonstrations, then GRPO whose update adds a Plackett-Luce loss over each
group of 8 samples ranked by the verifier (on the implicit rewards
0.1 * log(pi / pi_ref)) to the clipped surrogate; eval before and after,
and a rerank table with soft best-of-N at the same beta.

    python -m rankjax.launch --config configs/grpo_listwise.py --workdir /tmp/grpo_lw
    # listwise only
    python -m rankjax.launch --config configs/grpo_listwise.py --workdir /tmp/grpo_pl \\
        --config.grpo.objective=plackett_luce
"""

import dataclasses

from rankjax import demo


def get_config():
  cfg = demo.get_config()
  return dataclasses.replace(
      cfg, name="grpo_listwise",
      grpo=dataclasses.replace(cfg.grpo, objective=("clipped", "plackett_luce"),
                               listwise_beta=0.1))

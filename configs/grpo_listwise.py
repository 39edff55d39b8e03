"""The default run with a listwise term in GRPO: SFT on imperfect
demonstrations, then GRPO whose update adds, to the clipped surrogate, a
softmax cross-entropy over each group of 8 samples ranked by the verifier
(target softmax(r / 1) on the implicit rewards 0.1 * log(pi / pi_ref)); eval
before and after, and a rerank table with soft best-of-N at the same beta.
Measured on this task (docs/benchmarks.md): pass@1 above GRPO's, pass@8 kept
at the SFT model's, where GRPO alone loses 4 to 8 points of it.

    python -m rankjax.launch --config configs/grpo_listwise.py --workdir /tmp/grpo_lw
    # another listwise loss, alone
    python -m rankjax.launch --config configs/grpo_listwise.py --workdir /tmp/grpo_pl \\
        --config.grpo.objective=lipo_lambda
"""

import dataclasses

from rankjax import demo


def get_config():
  cfg = demo.get_config()
  return dataclasses.replace(
      cfg, name="grpo_listwise",
      grpo=dataclasses.replace(cfg.grpo, objective=("clipped", "softmax"), listwise_beta=0.1,
                               listwise_target_temperature=1.0))

"""Synthetic data: the model proposes new examples from a pool of seeds,
filters keep the novel, well-formed and verified ones (Self-Instruct, Wang
et al. 2023; OSS-Instruct, Wei et al. 2024), and later stages train on the
grown pool. See `_stage` and docs/algorithms/synthesis.md.

    python -m rankjax.launch --config configs/synth_arith.py --workdir /tmp/synth
"""

from rankjax.synth._rouge import NoveltyIndex, lcs_length, rouge_l, rouge_tokens
from rankjax.synth._stage import (FILTERS, check_form, format_counts, parse_proposal,
                                  proposal_fields, proposal_text, read_seeds,
                                  stage_synthesize)

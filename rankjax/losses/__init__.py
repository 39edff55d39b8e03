"""Pure loss functions of arrays, one module per method.

Every loss takes arrays (log-probs, logits, masks, rewards, values) and
keyword hyper-parameters and returns `(scalar float32 loss, dict of
metrics)`; helpers (advantages, KL estimators, log-prob gathers, reductions)
return arrays. All are jittable and finite on empty masks. Formulas and
papers: see docs/references.md.

  sft_loss, token_unlikelihood_loss,         _sft.py
    sequence_unlikelihood_loss, tfew_loss
  reward_model_loss                          _reward.py
  dpo_loss (DPO_LOSS_TYPES,                  _dpo.py
    REFERENCE_FREE_LOSS_TYPES)
  listwise_loss (LISTWISE_LOSS_TYPES:        _listwise.py
    Plackett-Luce, LiPO-λ, softmax over
    K ranked candidates per prompt)
  kto_loss                                   _kto.py
  grpo_loss (+ group/RLOO/REINFORCE++        _grpo.py
    advantages)
  ppo_loss = ppo_policy_loss + vf_coef ·     _ppo.py
    ppo_value_loss (+ ppo_token_rewards,
    gae, whiten, adaptive_kl_coef)
  kl_k1, kl_k2, kl_k3                        _kl.py
  group_ranking_metrics (in-graph Kendall    _ranking.py
    tau-b, NDCG, top-scored rank/reward of
    each group's samples; telemetry)
  token_logprobs, sequence_logprobs,         _common.py
    masked_sum, masked_mean
  chunked_token_logprobs, map_token_chunks,  _chunked.py
    head_logits (the LM head over chunks
    of tokens: no [B, T, V] logits);
    chunked_sft_loss,                         _sft.py
    chunked_token_unlikelihood_loss
"""

from rankjax.losses._chunked import chunked_token_logprobs
from rankjax.losses._chunked import head_logits
from rankjax.losses._chunked import map_token_chunks
from rankjax.losses._common import masked_mean
from rankjax.losses._common import masked_sum
from rankjax.losses._common import sequence_logprobs
from rankjax.losses._common import token_logprobs
from rankjax.losses._dpo import DPO_LOSS_TYPES
from rankjax.losses._dpo import REFERENCE_FREE_LOSS_TYPES
from rankjax.losses._dpo import dpo_loss
from rankjax.losses._grpo import group_advantages
from rankjax.losses._grpo import grpo_loss
from rankjax.losses._grpo import reinforce_pp_advantages
from rankjax.losses._grpo import rloo_advantages
from rankjax.losses._kl import kl_k1
from rankjax.losses._kl import kl_k2
from rankjax.losses._kl import kl_k3
from rankjax.losses._kto import kto_loss
from rankjax.losses._listwise import LISTWISE_LOSS_TYPES
from rankjax.losses._listwise import listwise_loss
from rankjax.losses._ppo import adaptive_kl_coef
from rankjax.losses._ppo import gae
from rankjax.losses._ppo import ppo_loss
from rankjax.losses._ppo import ppo_policy_loss
from rankjax.losses._ppo import ppo_token_rewards
from rankjax.losses._ppo import ppo_value_loss
from rankjax.losses._ppo import whiten
from rankjax.losses._ranking import group_ranking_metrics
from rankjax.losses._reward import reward_model_loss
from rankjax.losses._sft import chunked_sft_loss
from rankjax.losses._sft import chunked_token_unlikelihood_loss
from rankjax.losses._sft import repeated_ngram_mask
from rankjax.losses._sft import sequence_unlikelihood_loss
from rankjax.losses._sft import sft_loss
from rankjax.losses._sft import tfew_loss
from rankjax.losses._sft import token_unlikelihood_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "LISTWISE_LOSS_TYPES",
    "REFERENCE_FREE_LOSS_TYPES",
    "adaptive_kl_coef",
    "chunked_sft_loss",
    "chunked_token_logprobs",
    "chunked_token_unlikelihood_loss",
    "dpo_loss",
    "gae",
    "group_advantages",
    "group_ranking_metrics",
    "grpo_loss",
    "head_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kto_loss",
    "listwise_loss",
    "map_token_chunks",
    "masked_mean",
    "masked_sum",
    "ppo_loss",
    "ppo_policy_loss",
    "ppo_token_rewards",
    "ppo_value_loss",
    "reinforce_pp_advantages",
    "repeated_ngram_mask",
    "reward_model_loss",
    "rloo_advantages",
    "sequence_logprobs",
    "sequence_unlikelihood_loss",
    "sft_loss",
    "tfew_loss",
    "token_logprobs",
    "token_unlikelihood_loss",
    "whiten",
]

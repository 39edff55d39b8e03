"""Training: TrainState, optimizer, one pure step per algorithm, host loop.

    state, state_sh = train.create_train_state(model, tx, mesh, with_reference=True)
    step = train.jit_step(train.dpo_step, state_sh, train.batch_sharding(mesh),
                          hp=DPOCfg(beta=0.1))
    state, metrics = step(state, train.put_batch(batch, train.batch_sharding(mesh)))

Offline algorithms are registered once in `OFFLINE` (step, objective,
record formats, reference, metrics); their hyper-parameters are their config
sections. Online ones (`grpo_step`, `ppo_step`) share one `rollout`.

The pipeline stages "sft", "rm", "dpo", "kto", "listwise" (`_stages`), "grpo" and
"ppo" (`_rl`) are `stage_*(run)` functions; `rankjax.run` lists them.
"""

from rankjax.train._loop import (LoopConfig, MetricsWriter, Progress, evaluate_batches,
                                 jit_eval, jit_step, train_loop)
from rankjax.train._optim import decay_mask, make_optimizer, make_schedule
from rankjax.train._state import (TrainState, abstract_train_state, batch_sharding,
                                  create_train_state, put_batch, tree_shardings)
from rankjax.train._steps import (OFFLINE, Offline, apply_grads, check_batch, compute_grads,
                                  concat_pair, dpo_loss_fn, dpo_reference_free, dpo_objective,
                                  dpo_step, eval_step,
                                  head_logprobs, kto_loss_fn, kto_objective, kto_step,
                                  as_lists, check_lists, listwise_loss_fn, listwise_objective,
                                  listwise_step, mismatched_pairs,
                                  next_token_hidden, next_token_logits, rm_loss_fn, rm_objective, rm_step,
                                  sequence_logps, sft_loss_fn, sft_objective, sft_step,
                                  update)
from rankjax.train._grpo import (advantages, completion_logps, grpo_step, minibatch_order,
                                 policy_updates)
from rankjax.train._ppo import ppo_step, turn_token_rewards
from rankjax.train._rl import PromptBatches, jit_rl_step, rollout_settings, stage_grpo, stage_ppo
from rankjax.train._rollout import Rollout, RolloutSettings, logprob_mismatch, rollout
from rankjax.train._rollout import sample as sample_completions
from rankjax.train._rollout import score as score_completions
from rankjax.train._stages import (fit, reward_model_from, stage_dpo, stage_kto,
                                   stage_listwise, stage_rm, stage_sft, with_lora)

__all__ = [
    "LoopConfig", "MetricsWriter", "OFFLINE", "Offline", "Progress", "TrainState",
    "apply_grads", "batch_sharding", "check_batch", "compute_grads", "concat_pair",
    "create_train_state", "decay_mask", "dpo_loss_fn", "dpo_objective",
    "dpo_step", "eval_step", "evaluate_batches", "fit", "head_logprobs", "jit_eval", "jit_step", "kto_loss_fn",
    "kto_objective", "kto_step", "make_optimizer", "make_schedule", "mismatched_pairs",
    "next_token_hidden", "next_token_logits",
    "put_batch", "reward_model_from", "rm_loss_fn", "rm_objective",
    "rm_step", "sequence_logps", "sft_loss_fn", "sft_objective", "sft_step",
    "train_loop", "tree_shardings", "update", "with_lora", "stage_dpo", "stage_grpo",
    "stage_kto", "stage_ppo", "stage_rm", "stage_sft", "advantages", "completion_logps",
    "grpo_step", "minibatch_order", "policy_updates", "ppo_step", "PromptBatches",
    "jit_rl_step", "rollout_settings", "Rollout", "RolloutSettings", "logprob_mismatch",
    "rollout", "sample_completions", "score_completions", "as_lists", "check_lists",
    "listwise_loss_fn", "listwise_objective", "listwise_step", "stage_listwise",
    "dpo_reference_free", "abstract_train_state", "turn_token_rewards",
]

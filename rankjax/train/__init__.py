"""Offline alignment: TrainState, optimizer, one pure step per algorithm, host loop.

    state, state_sh = train.create_train_state(model, tx, mesh, with_reference=True)
    step = train.jit_step(train.dpo_step, state_sh, train.batch_sharding(mesh), beta=0.1)
    state, metrics = step(state, train.put_batch(batch, train.batch_sharding(mesh)))

Importing the package registers the pipeline stages "sft", "rm", "dpo",
"kto" (see `_stages`), "grpo" and "ppo" (see `_rl`) with `rankjax.run`.
"""

from rankjax.train._data import corrupt_completion, preference_records
from rankjax.train._loop import (LoopConfig, MetricsWriter, Progress, evaluate_batches,
                                 jit_eval, jit_step, train_loop)
from rankjax.train._optim import decay_mask, make_optimizer, make_schedule
from rankjax.train._state import (TrainState, batch_sharding, create_train_state, put_batch,
                                  tree_shardings)
from rankjax.train._steps import (OBJECTIVES, STEPS, apply_grads, check_batch, compute_grads,
                                  concat_pair, dpo_loss_fn, dpo_objective, dpo_step, eval_step,
                                  kto_loss_fn, kto_objective, kto_step, mismatched_pairs,
                                  next_token_logits, rm_loss_fn, rm_objective, rm_step,
                                  sequence_logps, sft_loss_fn, sft_objective, sft_step,
                                  token_logps, update)
from rankjax.train import _stages  # registers "sft", "rm", "dpo", "kto"
from rankjax.train import _rl  # registers "grpo", "ppo"
from rankjax.train._stages import fit, reward_model_from, stage_hparams, with_lora

__all__ = [
    "LoopConfig", "MetricsWriter", "OBJECTIVES", "Progress", "STEPS", "TrainState",
    "apply_grads", "batch_sharding", "check_batch", "compute_grads", "concat_pair",
    "corrupt_completion", "create_train_state", "decay_mask", "dpo_loss_fn", "dpo_objective",
    "dpo_step", "eval_step", "evaluate_batches", "fit", "jit_eval", "jit_step", "kto_loss_fn",
    "kto_objective", "kto_step", "make_optimizer", "make_schedule", "mismatched_pairs",
    "next_token_logits", "token_logps",
    "preference_records", "put_batch", "reward_model_from", "rm_loss_fn", "rm_objective",
    "rm_step", "sequence_logps", "sft_loss_fn", "sft_objective", "sft_step", "stage_hparams",
    "train_loop", "tree_shardings", "update", "with_lora",
]

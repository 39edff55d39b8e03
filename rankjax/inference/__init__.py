"""Inference-time re-ranking and evaluation.

    samples = inference.collect(model, tok, problems, k=8, temperature=1.0, rng=key)
    metrics = inference.summarize(samples)   # pass@1, pass@8, maj@8, best_of_8, ...
    best = inference.best_of_n(candidates_bg, scores_bg)
    votes = inference.majority_vote(answers_bg)
    result = inference.verify_and_revise(model, tok, prompts, verifier,
                                         feedback_fn, sampling_cfg, rounds=2, rng=key)

Metrics (`_metrics`) are pure numpy; scorers and selection live in
`_rerank`, prompt templates in `_prompts`, plots in `_plots`. Importing the
package's `stage_eval` and `stage_rerank` are pipeline stages (`_stages`;
`rankjax.run` lists them).
"""

from rankjax.inference._evaluate import EvalSamples
from rankjax.inference._evaluate import collect
from rankjax.inference._evaluate import evaluate
from rankjax.inference._evaluate import format_table
from rankjax.inference._evaluate import pass_at_k_curve
from rankjax.inference._evaluate import summarize
from rankjax.inference._evaluate import vote_accuracy
from rankjax.inference._metrics import best_of_n_curve
from rankjax.inference._metrics import best_of_n_expected
from rankjax.inference._metrics import implicit_reward_accuracy
from rankjax.inference._metrics import kendall_tau
from rankjax.inference._metrics import maj_at_k
from rankjax.inference._metrics import majority_answer
from rankjax.inference._metrics import ndcg
from rankjax.inference._metrics import pass_at_k
from rankjax.inference._metrics import pass_at_k_batch
from rankjax.inference._metrics import ranking_diagnostics
from rankjax.inference._metrics import soft_best_of_n_expected
from rankjax.inference._metrics import weighted_vote_at_k
from rankjax.inference._plots import plot_pass_at_k
from rankjax.inference._plots import plot_ranking_curve
from rankjax.inference._plots import plot_reward_curve
from rankjax.inference._plots import read_metrics
from rankjax.inference._prompts import COT_TRIGGER
from rankjax.data.tasks import encode_prompt
from rankjax.inference._prompts import extract_think_answer
from rankjax.inference._prompts import format_think
from rankjax.inference._prompts import split_think
from rankjax.inference._prompts import think_prompt
from rankjax.inference._prompts import zero_shot_cot
from rankjax.inference._rerank import ReviseResult
from rankjax.inference._rerank import best_index
from rankjax.inference._rerank import best_of_n
from rankjax.inference._rerank import decode_completions
from rankjax.inference._rerank import group
from rankjax.inference._rerank import group_list
from rankjax.inference._rerank import loglik_scores
from rankjax.inference._rerank import majority_vote
from rankjax.inference._rerank import reward_model_scores
from rankjax.inference._rerank import soft_best_of_n
from rankjax.inference._rerank import verifier_scores
from rankjax.inference._rerank import verify_and_revise
from rankjax.inference._rerank import weighted_vote
from rankjax.inference._stages import stage_eval, stage_rerank

__all__ = [
    "EvalSamples", "collect", "evaluate", "format_table", "pass_at_k_curve", "summarize",
    "vote_accuracy", "best_of_n_curve", "best_of_n_expected", "implicit_reward_accuracy",
    "kendall_tau", "maj_at_k", "majority_answer", "ndcg", "pass_at_k", "pass_at_k_batch",
    "ranking_diagnostics", "weighted_vote_at_k", "plot_pass_at_k", "plot_reward_curve",
    "COT_TRIGGER", "encode_prompt", "extract_think_answer", "format_think", "split_think",
    "think_prompt", "zero_shot_cot", "ReviseResult", "best_index", "best_of_n",
    "decode_completions", "group", "group_list", "loglik_scores", "majority_vote",
    "reward_model_scores", "verifier_scores", "verify_and_revise", "weighted_vote",
    "stage_eval", "stage_rerank", "soft_best_of_n", "soft_best_of_n_expected",
    "plot_ranking_curve", "read_metrics",
]

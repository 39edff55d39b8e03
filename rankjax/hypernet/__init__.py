"""Text-to-LoRA: a hypernetwork that turns a task description into a LoRA
adapter of a frozen base (docs/algorithms/hypernet.md).

    hn = hypernet.Hypernet.load(run_dir / "hypernet", base, tokenizer)
    model = hn.model("Multiply two numbers of one digit. Reply with the number only.")
    out = sampling.generate(model, prompts, cfg)          # a plain Transformer

    router = hypernet.Router(hn, hypernet.registry(family, n=8))
    routed = router.route(description)                    # entry + adapted model
    completions = routed.answer(problems)                 # greedy / best-of-n / vote

Modules: `_tasks` (the arithmetic family and its descriptions), `_network`
(embedding, the network, applying an adapter, save/load), `_train` (the
train step and its batches), `_router`, `_stage` (the pipeline stage
"hypernet"; `rankjax.run` lists it).
"""

from rankjax.hypernet._network import (Adapters, Hypernet, HyperNetwork, adapted, describe,
                                       lora_view, one_hot_inputs, one_task, with_adapters)
from rankjax.hypernet._router import PIPELINES, Entry, Routed, Router
from rankjax.hypernet._stage import (ARMS, format_table, gap_closed, pass_at_1, registry,
                                     stage_hypernet, train_hypernet)
from rankjax.hypernet._tasks import (DIGITS, FORMATS, OPS, Variant, all_variants, description,
                                     descriptions, make_task, parse_variant, sft_rows)
from rankjax.hypernet._train import (TRAINABLE, Conditioned, TaskBatches, batch_shardings,
                                     create_state, hypernet_loss_fn, hypernet_step,
                                     jit_hypernet_step, tokenize_rows)

__all__ = [
    "Adapters", "Hypernet", "HyperNetwork", "adapted", "describe", "lora_view",
    "one_hot_inputs", "one_task", "with_adapters", "PIPELINES", "Entry", "Routed", "Router",
    "ARMS", "format_table", "gap_closed", "pass_at_1", "registry", "stage_hypernet",
    "train_hypernet", "DIGITS", "FORMATS", "OPS", "Variant", "all_variants", "description",
    "descriptions", "make_task", "parse_variant", "sft_rows", "TRAINABLE", "Conditioned",
    "TaskBatches", "batch_shardings", "create_state", "hypernet_loss_fn", "hypernet_step",
    "jit_hypernet_step", "tokenize_rows",
]

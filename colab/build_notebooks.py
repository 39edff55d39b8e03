"""Writes the colab/*.ipynb notebooks from the cell sources below.

The notebooks are generated so that a review reads Python, not JSON:
edit the cells here, then run

    python colab/build_notebooks.py            # rewrite colab/*.ipynb
    python colab/build_notebooks.py --check    # exit 1 if a notebook is stale

Outputs are never stored (cleared cells, no execution counts) and cell ids
are fixed, so regenerating an unchanged notebook rewrites identical bytes.
tests/test_notebooks.py runs every notebook at RANKJAX_NOTEBOOK_SIZE=tiny and
checks that the files on disk match this script.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat import v4

HERE = Path(__file__).resolve().parent
GITHUB = "rankjax/rankjax"


def _badge(name: str) -> str:
  url = f"https://colab.research.google.com/github/{GITHUB}/blob/main/colab/{name}"
  return (f'<a href="{url}" target="_parent"><img '
          'src="https://colab.research.google.com/assets/colab-badge.svg" '
          'alt="Open In Colab"/></a>')


def md(text: str) -> tuple[str, str]:
  return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
  return ("code", textwrap.dedent(text).strip("\n"))


# -- cells shared by every notebook ---------------------------------------------

INSTALL = code('''
    # Install rankjax (on Colab). Skipped where rankjax is already importable:
    # a local checkout, or the test suite that runs this notebook.
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("rankjax") is None:
      subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                      "rankjax @ git+https://github.com/rankjax/rankjax"], check=True)
    ''')


def settings(workdir: str, *extra: str) -> tuple[str, str]:
  lines = [
      "import os",
      "from pathlib import Path",
      "",
      '# "tiny": seconds on a CPU (what the test suite runs); "full": the real',
      "# sizes (the default, e.g. on Colab).",
      'SIZE = os.environ.get("RANKJAX_NOTEBOOK_SIZE", "full")',
      'if SIZE not in ("tiny", "full"):',
      '  raise ValueError(f"RANKJAX_NOTEBOOK_SIZE must be \'tiny\' or \'full\', got {SIZE!r}")',
      'TINY = SIZE == "tiny"',
      f'WORKDIR = Path(os.environ.get("RANKJAX_WORKDIR", "{workdir}")).resolve()',
      "WORKDIR.mkdir(parents=True, exist_ok=True)",
      *extra,
      'print(f"size={SIZE}  workdir={WORKDIR}")',
  ]
  return ("code", "\n".join(lines))


RECIPES = code('''
    import urllib.request

    import rankjax
    from rankjax import config as config_lib
    from rankjax import run as run_lib

    RAW = "https://raw.githubusercontent.com/rankjax/rankjax/main"


    def recipe(name: str) -> Path:
      """configs/<name>.py: from the source checkout rankjax is imported from,
      or fetched once from GitHub (pip installs the package, not the recipes)."""
      checkout = Path(rankjax.__file__).resolve().parents[1]
      local = checkout / "configs" / f"{name}.py"
      if (checkout / "pyproject.toml").exists() and local.exists():
        return local
      fetched = Path("configs") / f"{name}.py"
      if not fetched.exists():
        fetched.parent.mkdir(exist_ok=True)
        urllib.request.urlretrieve(f"{RAW}/configs/{name}.py", fetched)
      return fetched


    def configure(name: str, overrides: dict) -> config_lib.Config:
      """The recipe with overrides, validated: the Config that
      `python -m rankjax.launch --config configs/<name>.py --config.<key>=<value> ...`
      runs. Values are given as on the command line (tuples as "a,b")."""
      cfg = config_lib.load(str(recipe(name)))
      for key, value in overrides.items():
        cfg = config_lib.override(cfg, key, str(value))
      return config_lib.validate(cfg)
    ''')

READ_JSONL = code('''
    import json


    def read_jsonl(path) -> list[dict]:
      with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
    ''')


OUTPUTS = code('''
    # What the run left in the workdir (checkpoints not listed).
    for path in sorted(WORKDIR.rglob("*")):
      rel = path.relative_to(WORKDIR)
      if path.is_file() and len(rel.parts) <= 2 and "checkpoints" not in rel.parts:
        print(rel)
    ''')


# -- 01 quickstart ---------------------------------------------------------------

QUICKSTART = [
    md('''
        # rankjax quickstart: one model, every decoding mode

        {badge}

        Load a Hugging Face checkpoint from a local directory (or build a tiny
        model), then decode the same prompts with greedy, temperature, top-k,
        top-p, min-p, repetition penalty, groups of samples per prompt and beam
        search, and compare what comes out.

        Environment switches: `RANKJAX_MODEL_PATH` (a local Llama 3.x / Qwen2 /
        Qwen2.5 / Qwen3 directory with `config.json`, `*.safetensors` and
        `tokenizer.json`), `RANKJAX_NOTEBOOK_SIZE` (`full` by default, `tiny`
        for a seconds-long CPU run), `RANKJAX_WORKDIR`.
        '''),
    INSTALL,
    md("## Settings"),
    settings("runs/01_quickstart", 'MODEL_PATH = os.environ.get("RANKJAX_MODEL_PATH", "")'),
    md('''
        ## A model and its tokenizer

        With `RANKJAX_MODEL_PATH` the checkpoint is read with
        `rankjax.models.from_pretrained` (safetensors, never unpickled) and its
        `tokenizer.json` with `rankjax.tokenizer.load_tokenizer`. Without one,
        the tiny size builds a random model from `rankjax.testing` (its text is
        noise, but every mode runs in seconds), and the full size first trains
        a small model on the built-in arithmetic task, with half of its
        demonstrations wrong, so that the modes have a distribution worth
        comparing.
        '''),
    code('''
        import json

        import jax
        import jax.numpy as jnp
        import numpy as np

        from rankjax import inference, models, sampling, testing
        from rankjax.data import tasks
        from rankjax.tokenizer import CharTokenizer, load_tokenizer

        ARITHMETIC = ["12+34=", "7+58=", "40+2="]
        if MODEL_PATH:
          model = models.from_pretrained(MODEL_PATH, dtype=jnp.float32)
          tok = load_tokenizer(MODEL_PATH)
          PROMPTS = ["The capital of France is", "def fibonacci(n):", "12+34="]
        elif TINY:
          tok = CharTokenizer()
          model = testing.tiny_model("qwen2", vocab_size=tok.vocab_size, hidden_size=32,
                                     num_layers=1, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64)
          PROMPTS = ARITHMETIC
        else:
          from rankjax import run as run_lib
          from rankjax.config import Config, DataCfg, SFTCfg, validate
          sft = run_lib.execute(
              validate(Config(name="sft", pipeline=("sft",), log_every=100,
                              data=DataCfg(ops=("add",), sft_noise=0.5, max_length=32),
                              sft=SFTCfg(steps=1000))),
              WORKDIR / "sft")
          model, tok = sft.model, sft.tokenizer
          PROMPTS = ARITHMETIC
        # Arithmetic prompts can be checked: a completion is right when its
        # first line is the sum.
        ANSWERS = {p: str(sum(map(int, p[:-1].split("+")))) for p in ARITHMETIC}
        MAX_NEW = 8 if TINY else 24
        c = model.config
        print(f"{c.model_type}: {c.num_layers} layers, hidden {c.hidden_size}, "
              f"vocab {c.vocab_size}; prompts {PROMPTS}")
        '''),
    md('''
        ## Every decoding mode

        `sampling.generate` runs one jit-compiled prefill plus a
        `lax.while_loop` decode. Temperature, top-k, top-p, min-p and
        `max_new_tokens` are traced per-row values, so changing them does not
        recompile. Prompts are ragged lists of token ids, and each returned row
        is the completion only, padded after its EOS.
        '''),
    code('''
        prompt_ids = [inference.encode_prompt(tok, p) for p in PROMPTS]
        base = {"max_new_tokens": MAX_NEW, "eos_token_ids": tuple(tok.eos_ids),
                "pad_token_id": tok.pad_id}
        MODES = {
            "greedy": sampling.SamplingConfig(**base, temperature=0.0),
            "temperature 0.7": sampling.SamplingConfig(**base, temperature=0.7),
            "top-k 20": sampling.SamplingConfig(**base, temperature=1.0, top_k=20),
            "top-p 0.9": sampling.SamplingConfig(**base, temperature=1.0, top_p=0.9),
            "min-p 0.1": sampling.SamplingConfig(**base, temperature=1.0, min_p=0.1),
            "greedy + repetition penalty 1.3": sampling.SamplingConfig(
                **base, temperature=0.0, repetition_penalty=1.3),
        }


        def decode(tokens, lengths) -> list[str]:
          return [tok.decode(np.asarray(t[:int(n)])) for t, n in zip(tokens, lengths)]


        def summed_logprob(out) -> list[float]:
          """log π(completion | prompt) under the raw model, per row."""
          n = out.tokens.shape[1]
          mask = np.arange(n)[None, :] < np.asarray(out.lengths)[:, None]
          return [float(x) for x in np.sum(np.where(mask, np.asarray(out.logprobs), 0.0), axis=1)]


        results = {}
        for name, scfg in MODES.items():
          out = sampling.generate(model, prompt_ids, scfg, rng=jax.random.key(0))
          results[name] = {"completions": decode(out.tokens, out.lengths),
                           "logprob": summed_logprob(out)}
        '''),
    md('''
        **Groups of samples.** `num_samples=G` samples G completions per
        prompt from one prefill (the KV cache is shared), which is what GRPO
        and best-of-N use. Row `r` continues prompt `r // G`.
        '''),
    code('''
        G = 4
        group_cfg = sampling.SamplingConfig(**base, temperature=1.0, num_samples=G)
        out = sampling.generate(model, prompt_ids, group_cfg, rng=jax.random.key(1))
        group = decode(out.tokens, out.lengths)
        results[f"{G} samples per prompt"] = {"completions": group,
                                              "logprob": summed_logprob(out)}
        for i, prompt in enumerate(PROMPTS):
          print(f"{prompt!r:>28} -> {group[i * G:(i + 1) * G]}")
        '''),
    md('''
        **Beam search** keeps the `num_beams` best partial sequences by summed
        log-probability (transformers' definition, length penalty included) and
        returns the best hypothesis per prompt.
        '''),
    code('''
        beams = sampling.beam_search(model, prompt_ids, num_beams=4, max_new_tokens=MAX_NEW,
                                     eos_token_ids=tuple(tok.eos_ids), pad_token_id=tok.pad_id)
        results["beam search, 4 beams"] = {"completions": decode(beams.tokens, beams.lengths),
                                           "logprob": [float(s) for s in beams.scores]}
        '''),
    md('''
        ## Compare

        One row per mode: each prompt's completion (the first of the group for
        the sampled groups), the mean log-probability of the completions under
        the model (beam search reports its length-penalised score) and, for
        arithmetic prompts, how many completions are right (✓ in a cell).
        '''),
    code('''
        from IPython.display import Markdown, display


        def correct(prompt: str, text: str) -> bool:
          return prompt in ANSWERS and bool(tasks.verify(text, ANSWERS[prompt]))


        header = ("| mode | " + " | ".join(f"`{p}`" for p in PROMPTS) +
                  " | mean log-prob | correct |")
        lines = [header, "|" + "---|" * (len(PROMPTS) + 3)]
        for name, r in results.items():
          per_prompt = len(r["completions"]) // len(PROMPTS)
          rows = [(PROMPTS[i // per_prompt], text) for i, text in enumerate(r["completions"])]
          shown = [repr(text).replace("|", "\\\\|") + (" ✓" if correct(p, text) else "")
                   for p, text in rows[::per_prompt]]
          right = sum(correct(p, text) for p, text in rows)
          lines.append(f"| {name} | " + " | ".join(shown) +
                       f" | {np.mean(r['logprob']):.2f} | {right}/{len(rows)} |")
        display(Markdown("\\n".join(lines)))
        '''),
    code('''
        # Checks that hold for any model: the same key gives the same samples,
        # and top-k 1 leaves only the argmax, which is greedy decoding.
        again = sampling.generate(model, prompt_ids, MODES["top-p 0.9"], rng=jax.random.key(0))
        assert decode(again.tokens, again.lengths) == results["top-p 0.9"]["completions"]
        top1 = sampling.generate(model, prompt_ids,
                                 sampling.SamplingConfig(**base, temperature=1.0, top_k=1),
                                 rng=jax.random.key(2))
        assert decode(top1.tokens, top1.lengths) == results["greedy"]["completions"]
        (WORKDIR / "decoding.json").write_text(
            json.dumps({"prompts": PROMPTS, "results": results}, indent=2))
        print("checks passed; wrote", WORKDIR / "decoding.json")
        '''),
]


# -- 02 SFT -> DPO ----------------------------------------------------------------

SFT_DPO = [
    md('''
        # SFT, then DPO on a preference file

        {badge}

        Preference data in TRL's format (`{"prompt", "chosen", "rejected"}` per
        JSON line) is all DPO needs. This notebook writes a small file from the
        built-in arithmetic task: the chosen answer is right, and the rejected
        one is off by 1 to 9. It fine-tunes a model on the chosen answers
        (`configs/sft.py`), then runs DPO from that checkpoint (`configs/dpo.py`,
        LoRA adapters, with the SFT model as the reference). Both runs go through
        the public entry point, `rankjax.run.execute(config, workdir)`, which is
        what `python -m rankjax.launch --config configs/<x>.py --config.<key>=<value>`
        calls. At the end it plots the loss and the implicit-reward accuracy
        from each run's `metrics.jsonl`.

        `RANKJAX_NOTEBOOK_SIZE=tiny` runs in under a minute on a CPU.
        '''),
    INSTALL,
    md("## Settings"),
    settings("runs/02_sft_dpo"),
    RECIPES,
    READ_JSONL,
    md('''
        ## A preference file

        Any `{"prompt", "chosen", "rejected"}` JSONL works here. SFT reads
        `{"prompt", "completion"}` rows, so it gets the chosen answers.
        '''),
    code('''
        import numpy as np

        from rankjax.data import tasks

        N_TRAIN, N_EVAL = (64, 32) if TINY else (4000, 200)
        task = tasks.ArithmeticTask(ops=("add",), max_digits=2, seed=0)


        def preference_rows(split: str, n: int, seed: int) -> list[dict]:
          rng = np.random.default_rng(seed)
          rows = []
          for r in tasks.generate(task, split, n):
            wrong = int(r["answer"]) + int(rng.choice([-1, 1]) * rng.integers(1, 10))
            rows.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": str(wrong)})
          return rows


        def write_jsonl(path: Path, rows: list[dict]) -> Path:
          path.write_text("".join(json.dumps(r) + "\\n" for r in rows))
          return path


        data_dir = WORKDIR / "data"
        data_dir.mkdir(exist_ok=True)
        train_pairs = preference_rows("train", N_TRAIN, seed=1)
        prefs = write_jsonl(data_dir / "prefs_train.jsonl", train_pairs)
        prefs_eval = write_jsonl(data_dir / "prefs_eval.jsonl", preference_rows("test", N_EVAL, seed=2))
        sft_data = write_jsonl(data_dir / "sft_train.jsonl",
                               [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train_pairs])
        print(prefs.read_text().splitlines()[:3])
        '''),
    md('''
        ## SFT

        `configs/sft.py` with the data pointed at the file. The tiny size also
        shrinks the model and the step count. The trained model is exported in
        Hugging Face format to `<workdir>/sft/export`.
        '''),
    code('''
        TINY_MODEL = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
                      "model.num_kv_heads": 1, "model.head_dim": 16,
                      "model.intermediate_size": 64}
        size = {**TINY_MODEL, "data.batch_size": 8, "data.max_length": 24,
                "data.max_prompt_length": 16, "log_every": 1, "eval_every": 5} if TINY else {}
        SFT_STEPS, DPO_STEPS = (10, 10) if TINY else (600, 300)

        sft_cfg = configure("sft", {**size, "sft.steps": SFT_STEPS, "data.source": "jsonl",
                                    "data.path": sft_data})
        sft_run = run_lib.execute(sft_cfg, WORKDIR / "sft")
        '''),
    md('''
        ## DPO from the SFT checkpoint

        `model.path` loads the export. It was trained with the built-in
        character tokenizer, which has no `tokenizer.json`, so `tokenizer.path`
        says `char`. The recipe trains LoRA adapters in the DPO stage
        (`model.lora_stages=("dpo",)`), and the reference model is the same
        network with the adapters off.
        '''),
    code('''
        dpo_cfg = configure("dpo", {**size, "pipeline": "dpo", "dpo.steps": DPO_STEPS,
                                    "model.path": WORKDIR / "sft" / "export",
                                    "tokenizer.path": "char", "data.source": "jsonl",
                                    "data.path": prefs, "data.eval_path": prefs_eval})
        dpo_run = run_lib.execute(dpo_cfg, WORKDIR / "dpo")
        '''),
    md('''
        ## Curves

        Every run appends one JSON object per logged step to
        `<workdir>/metrics.jsonl`. Evaluation rows carry `eval/` names. The
        implicit reward of a completion is β·(log π − log π_ref), and
        `rewards/accuracies` is the share of pairs where the chosen answer's
        implicit reward beats the rejected one's. DPO starts at loss log 2 and
        accuracy 0, because the policy equals its reference at the start.
        '''),
    code('''
        import matplotlib.pyplot as plt

        sft_rows = [r for r in read_jsonl(WORKDIR / "sft" / "metrics.jsonl") if "loss" in r]
        dpo_all = read_jsonl(WORKDIR / "dpo" / "metrics.jsonl")
        dpo_rows = [r for r in dpo_all if "loss" in r]
        dpo_eval = [r for r in dpo_all if "eval/loss" in r]


        def series(rows, key):
          return [r["step"] for r in rows], [r[key] for r in rows]


        fig, (ax_sft, ax_dpo, ax_acc) = plt.subplots(1, 3, figsize=(15, 3.8))
        ax_sft.plot(*series(sft_rows, "loss"), label="train")
        ax_sft.set(title="SFT loss", xlabel="step")
        ax_dpo.plot(*series(dpo_rows, "loss"), label="train")
        ax_dpo.plot(*series(dpo_eval, "eval/loss"), "o-", label="held-out pairs")
        ax_dpo.axhline(np.log(2), color="gray", ls=":", label="log 2")
        ax_dpo.set(title="DPO loss", xlabel="step")
        ax_acc.plot(*series(dpo_rows, "rewards/accuracies"), label="train batch")
        ax_acc.plot(*series(dpo_eval, "eval/rewards/accuracies"), "o-", label="held-out pairs")
        ax_acc.set(title="implicit-reward accuracy", xlabel="step", ylim=(-0.02, 1.02))
        for ax in (ax_sft, ax_dpo, ax_acc):
          ax.grid(alpha=0.3)
          ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(WORKDIR / "sft_dpo.png")
        plt.show()

        summary = json.loads((WORKDIR / "dpo" / "summary.json").read_text())["dpo"]
        print(f"DPO: {summary['steps']} steps, {summary['trainable_params']} trainable (LoRA) "
              f"parameters; held-out implicit-reward accuracy "
              f"{summary['eval/rewards/accuracies']:.3f}, margin {summary['eval/rewards/margins']:.4f}")
        '''),
    OUTPUTS,
]


# -- 03 GRPO on arithmetic ---------------------------------------------------------

GRPO_ARITH = [
    md('''
        # GRPO on the built-in arithmetic task

        {badge}

        `configs/grpo_arith.py` first runs SFT on imperfect demonstrations (half
        of the answers wrong), so the model proposes right and wrong answers with
        similar likelihood. GRPO then samples 8 answers per prompt, scores them
        with the verifier inside the compiled step, and moves the ranking toward
        the verified ones. Evaluations before and after GRPO measure pass@1,
        maj@k and pass@k, and a final `rerank` stage compares best-of-N and
        majority voting. It writes `plots/pass_at_k.png` and
        `plots/reward_curve.png`.

        The full size takes several minutes on a Colab CPU and less on a GPU or
        TPU. `RANKJAX_NOTEBOOK_SIZE=tiny` takes about a minute on a CPU, but it
        trains too briefly to learn anything.
        '''),
    INSTALL,
    md("## Settings"),
    settings("runs/03_grpo_arithmetic"),
    RECIPES,
    READ_JSONL,
    md('''
        ## Run the recipe

        The recipe is `sft → eval → grpo → eval`, plus `rerank` at the end for
        the plots. Only the tiny size overrides anything else.
        '''),
    code('''
        overrides = {"pipeline": "sft,eval,grpo,eval,rerank"}
        if TINY:
          overrides.update({
              "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
              "model.num_kv_heads": 1, "model.head_dim": 16, "model.intermediate_size": 64,
              "data.batch_size": 16, "sft.steps": 20, "log_every": 1,
              "grpo.steps": 4, "grpo.num_prompts": 4, "grpo.group_size": 4,
              "eval.num_problems": 16, "eval.num_samples": 4})
        cfg = configure("grpo_arith", overrides)
        run = run_lib.execute(cfg, WORKDIR)
        '''),
    md('''
        ## What the stages measured

        `summary.json` holds each evaluated stage's metrics under its name
        (`sft`, `grpo`), their pass@k curves under `pass_at_k_curves`, and the
        rerank results under `rerank`.
        '''),
    code('''
        from rankjax import inference

        summary = json.loads((WORKDIR / "summary.json").read_text())
        k = cfg.eval.num_samples
        stages = summary["evaluated"]
        print(inference.format_table({s: summary[s] for s in stages},
                                     ["pass@1", f"maj@{k}", f"pass@{k}", f"best_of_{k}", "greedy"]))
        '''),
    md("The plots written by the `rerank` stage:"),
    code('''
        from IPython.display import Image, display

        for name, path in summary["plots"].items():
          print(name)
          display(Image(filename=path))
        '''),
    md('''
        The same data plotted directly: the GRPO reward per step from
        `metrics.jsonl`, and pass@k per evaluated stage from `summary.json`.
        '''),
    code('''
        import matplotlib.pyplot as plt

        rows = [r for r in read_jsonl(WORKDIR / "metrics.jsonl") if r.get("stage") == "grpo"]
        fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(12, 4))
        ax_r.plot([r["step"] for r in rows], [r["reward"] for r in rows], label="mean reward")
        ax_r.plot([r["step"] for r in rows], [r["zero_std_group_fraction"] for r in rows],
                  ls="--", label="groups with one reward value (no signal)")
        ax_r.set(title="GRPO", xlabel="step", ylim=(-0.02, 1.02))
        for stage, curve in summary["pass_at_k_curves"].items():
          ks = sorted(int(n) for n in curve)
          ax_k.plot(ks, [curve[str(n)] for n in ks], "o-", label=stage)
        ax_k.set_xscale("log", base=2)
        ax_k.set(title="pass@k on held-out problems", xlabel="k", ylim=(-0.02, 1.02))
        for ax in (ax_r, ax_k):
          ax.grid(alpha=0.3)
          ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(WORKDIR / "grpo_curves.png")
        plt.show()
        gain = summary["grpo"]["pass@1"] - summary["sft"]["pass@1"]
        print(f"pass@1: SFT {summary['sft']['pass@1']:.3f} -> GRPO {summary['grpo']['pass@1']:.3f} "
              f"({gain:+.3f})")
        '''),
    OUTPUTS,
]


# -- 04 real model on GSM8K --------------------------------------------------------

GSM8K = [
    md('''
        # GRPO on GSM8K with a real checkpoint (Qwen2.5-0.5B-Instruct)

        {badge}

        `configs/grpo_gsm8k.py` runs GRPO on a Hugging Face checkpoint. A Python
        verifier on the host checks the final number of each answer. The recipe
        evaluates before and after training. Use a Colab TPU or GPU runtime for
        the full size (*Runtime → Change runtime type*).

        * **full** (the default): downloads Qwen2.5-0.5B-Instruct and GSM8K in
          the "Download" section, unless `RANKJAX_MODEL_PATH` and
          `RANKJAX_GSM8K_DIR` (holding `train.jsonl` and `test.jsonl`) already
          point at local copies.
        * **tiny** (`RANKJAX_NOTEBOOK_SIZE=tiny`, CPU, offline): skips the
          download. It builds a tiny random Qwen2 model with `transformers`, a
          small byte-level BPE tokenizer with a ChatML template, and a 16-row
          GSM8K-format file, then runs the same recipe with small overrides.
        '''),
    INSTALL,
    md("## Settings"),
    settings("runs/04_gsm8k",
             'MODEL_PATH = os.environ.get("RANKJAX_MODEL_PATH", "")',
             'DATA_DIR = Path(os.environ.get("RANKJAX_GSM8K_DIR", WORKDIR / "gsm8k"))',
             'HUB_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"'),
    code('''
        import socket


        def online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
          if os.environ.get("HF_HUB_OFFLINE") == "1":
            return False
          try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
          except OSError:
            return False


        have_data = (DATA_DIR / "train.jsonl").exists() and (DATA_DIR / "test.jsonl").exists()
        # Only the full size downloads, and only what is not already local.
        DOWNLOAD = not TINY and (not MODEL_PATH or not have_data) and online()
        if not TINY and not DOWNLOAD and (not MODEL_PATH or not have_data):
          raise RuntimeError("offline: set RANKJAX_MODEL_PATH to a local Qwen2.5-0.5B-Instruct and "
                             "RANKJAX_GSM8K_DIR to a directory with train.jsonl and test.jsonl "
                             "(or use RANKJAX_NOTEBOOK_SIZE=tiny)")
        print("download:", DOWNLOAD)
        '''),
    md('''
        ## Download (online only)

        These two cells are the only ones that use the network. They do
        nothing at the tiny size, offline, or when local copies are given.
        '''),
    code('''
        if DOWNLOAD and not MODEL_PATH:
          from huggingface_hub import snapshot_download
          MODEL_PATH = snapshot_download(
              HUB_MODEL, allow_patterns=["*.json", "*.safetensors", "*.jinja", "merges.txt",
                                         "vocab.json"])
          print("model:", MODEL_PATH)
        else:
          print("model download skipped")
        '''),
    code('''
        if DOWNLOAD and not have_data:
          if importlib.util.find_spec("datasets") is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "datasets"], check=True)
          import datasets
          DATA_DIR.mkdir(parents=True, exist_ok=True)
          for split in ("train", "test"):
            # Rows are {"question", "answer": "<worked solution> #### 72"}.
            datasets.load_dataset("openai/gsm8k", "main", split=split).to_json(
                DATA_DIR / f"{split}.jsonl", lines=True)
          print("data:", sorted(p.name for p in DATA_DIR.iterdir()))
        else:
          print("data download skipped")
        '''),
    md('''
        ## Tiny stand-ins (tiny size only)

        A random Qwen2 model with a real tokenizer directory: a byte-level BPE
        trained on the questions, with ChatML special tokens and template (the
        layout of Qwen2.5 checkpoints). `transformers` writes it, the same way
        the test suite builds its reference models, and rankjax reads it back
        with `models.from_pretrained`. The data is 16 GSM8K-format rows.
        '''),
    code('''
        import json
        import random

        if TINY:
          rng = random.Random(0)
          rows = []
          for i in range(16):
            name, item = ["Ana", "Ben", "Caro", "Dev"][i % 4], ["apples", "books", "coins", "pens"][i // 4]
            a, b = sorted((rng.randint(2, 60), rng.randint(2, 60)), reverse=True)
            if i % 2:
              q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
              sol = f"{name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item} left.\\n#### {a - b}"
            else:
              q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
              sol = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\\n#### {a + b}"
            rows.append({"question": q, "answer": sol})
          DATA_DIR.mkdir(parents=True, exist_ok=True)
          for split in ("train", "test"):
            (DATA_DIR / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
          print(rows[0])
        '''),
    code('''
        if TINY:
          import tokenizers
          import torch
          import transformers
          from tokenizers import decoders, pre_tokenizers, trainers

          CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\\\n' + "
                    "message['content'] + '<|im_end|>' + '\\\\n' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\\\n' }}{% endif %}")
          bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
          bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
          bpe.decoder = decoders.ByteLevel()
          bpe.train_from_iterator(
              [r["question"] + "\\n" + r["answer"] for r in rows],
              trainers.BpeTrainer(vocab_size=512, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
          hf_tok = transformers.PreTrainedTokenizerFast(
              tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
              chat_template=CHATML)
          MODEL_PATH = str(WORKDIR / "tiny-qwen2")
          hf_tok.save_pretrained(MODEL_PATH)
          torch.manual_seed(0)
          hf_cfg = transformers.Qwen2Config(
              vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=512, tie_word_embeddings=True,
              eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
          transformers.Qwen2ForCausalLM(hf_cfg).save_pretrained(MODEL_PATH)
          print(MODEL_PATH, sorted(p.name for p in Path(MODEL_PATH).iterdir()))
        '''),
    md('''
        ## Run the recipe

        `eval → grpo → eval`. Prompts go through the checkpoint's chat
        template, 8 completions are sampled per prompt, and the reward is 1 when
        the number after the last `####` (or else the last number) matches the
        reference. The full size keeps the recipe's settings (bfloat16
        activations, FSDP over every device, 500 steps). To change them, edit
        `FULL` below, as `--config.<key>=<value>` would on the command line.
        At the tiny size a random model almost never ends an answer within 16
        tokens, so `grpo.mask_truncated` is off and truncated answers still
        count.
        '''),
    RECIPES,
    code('''
        paths = {"model.path": MODEL_PATH, "data.path": DATA_DIR / "train.jsonl",
                 "data.eval_path": DATA_DIR / "test.jsonl"}
        FULL = {}
        TINY_OVERRIDES = {
            "model.dtype": "float32", "model.remat": "false", "data.num_eval": 8,
            "data.max_prompt_length": 96, "data.max_length": 128, "sample.max_new_tokens": 16,
            "grpo.steps": 3, "grpo.num_prompts": 4, "grpo.group_size": 4,
            "grpo.num_minibatches": 2, "grpo.mask_truncated": "false", "log_every": 1,
            "eval.num_problems": 8, "eval.num_samples": 4}
        cfg = configure("grpo_gsm8k", {**paths, **(TINY_OVERRIDES if TINY else FULL)})
        run = run_lib.execute(cfg, WORKDIR / "run")
        '''),
    md('''
        ## Curves

        `rankjax.inference` draws the reward curve from `metrics.jsonl` and
        pass@k from `summary.json`.
        '''),
    code('''
        from IPython.display import Image, display

        from rankjax import inference

        out = WORKDIR / "run"
        summary = json.loads((out / "summary.json").read_text())
        inference.plot_reward_curve(out / "metrics.jsonl", WORKDIR / "plots" / "reward_curve.png",
                                    keys=["reward", "rewards/correct"])
        inference.plot_pass_at_k(summary["pass_at_k_curves"], WORKDIR / "plots" / "pass_at_k.png")
        for name in ("reward_curve", "pass_at_k"):
          display(Image(filename=str(WORKDIR / "plots" / f"{name}.png")))
        k = cfg.eval.num_samples
        print(inference.format_table({s: summary[s] for s in summary["evaluated"]},
                                     ["pass@1", f"maj@{k}", f"pass@{k}", "greedy", "mean_length"]))
        '''),
    md('''
        ## Ask the trained policy

        `run.model` is the policy after GRPO, and `<workdir>/run/export` holds
        the same weights in Hugging Face format.
        '''),
    code('''
        import jax
        import numpy as np

        from rankjax import sampling
        from rankjax.data import tasks

        problems = tasks.read_gsm8k(DATA_DIR / "test.jsonl")[:2]
        prompts = [inference.encode_prompt(run.tokenizer, p["prompt"], chat=True) for p in problems]
        scfg = sampling.SamplingConfig(max_new_tokens=cfg.sample.max_new_tokens, temperature=0.0,
                                       eos_token_ids=tuple(run.tokenizer.eos_ids),
                                       pad_token_id=run.tokenizer.pad_id)
        out = sampling.generate(run.model, prompts, scfg, rng=jax.random.key(0))
        for p, t, n in zip(problems, np.asarray(out.tokens), np.asarray(out.lengths)):
          text = run.tokenizer.decode(t[:n])
          print(f"Q: {p['prompt']}\\nA: {text!r}  (reference {p['answer']}, "
                f"reward {tasks.verify_numeric(text, p['answer'])})\\n")
        '''),
    OUTPUTS,
]

# -- 05 multi-turn rollouts with tools ---------------------------------------------

MULTI_TURN = [
    md('''
        # Multi-turn rollouts: tools and environments

        {badge}

        A rollout can be a conversation instead of one completion: the model
        writes a turn, an environment answers with observation tokens (a
        tool's result, a game's reply), and the model continues, until it
        writes an end-of-sequence token, the environment ends the episode, or a
        limit is reached. This notebook

        1. runs the built-in calculator on one hand-written turn, as a
           *traceable* environment (`jax.numpy`, compiled into the decode loop)
           and as its plain-Python twin;
        2. writes a new *host* environment, a lookup tool, in a few lines of
           Python and samples multi-turn transcripts with it;
        3. trains with GRPO and the calculator in the loop
           (`configs/grpo_tools_arith.py`), then plots the reward and how
           often the policy calls the tool.

        The full size takes several minutes on a Colab CPU and less on a GPU
        or TPU. `RANKJAX_NOTEBOOK_SIZE=tiny` takes about a minute on a CPU, but
        it trains too briefly to learn anything.
        '''),
    INSTALL,
    md("## Settings"),
    settings("runs/05_multi_turn_tools"),
    md('''
        ## The calculator, one turn at a time

        A traceable environment is two per-row functions in `jax.numpy`:
        `reset(record) -> state` and
        `step(state, turn_tokens, turn_mask) -> (state, obs_tokens, obs_mask, reward, done, error)`.
        The decode loop vmaps them over the rows and calls them inside its
        `while_loop` whenever a row's turn ends, so a whole multi-turn rollout
        stays one compiled program. The model calls the calculator by writing
        `<calc>A op B</calc>` (op one of `+ - *`). The turn ends at `</calc>`,
        and the observation is the result followed by a newline. Below, the
        step runs by hand on one turn. `envs.HostCalculator` follows the same
        rule in plain Python, strings in and out (use it with tokenizers that
        are not one token per character).
        '''),
    code('''
        import jax
        import jax.numpy as jnp
        import numpy as np

        from rankjax import envs
        from rankjax.tokenizer import CharTokenizer

        tok = CharTokenizer()
        calc = envs.calculator(tok, envs.Limits(max_turns=2, max_observation_tokens=12))
        print("turn ends:", [tok.decode(ids) for ids in calc.turn_ends])

        turn = "<calc>1234+56789</calc>"
        turn_tokens = jnp.asarray(tok.encode(turn), jnp.int32)
        state = calc.reset_fn({})
        state, obs_tokens, obs_mask, reward, done, error = jax.jit(calc.step_fn)(
            state, turn_tokens, jnp.ones(turn_tokens.shape, bool))
        observation = tok.decode(np.asarray(obs_tokens)[np.asarray(obs_mask)])
        print(f"traceable: {turn!r} -> {observation!r}  (reward {float(reward)}, "
              f"done {bool(done)}, error {bool(error)})")

        host_step = envs.HostCalculator().step(None, turn)
        print(f"host:      {turn!r} -> {host_step.observation!r}  (reward {host_step.reward}, "
              f"done {host_step.done}, error {host_step.error})")
        assert observation == host_step.observation == "58023\\n"
        '''),
    md('''
        ## Your own environment

        A host environment is any object with a `name`, the text that ends a
        model turn (`turn_end`), `reset(record) -> state` and
        `step(state, turn_text) -> envs.HostStep(state, observation, reward, done, error)`.
        `record` is the row the prompt came from, so the environment can hold
        per-problem data the prompt does not show. Here it is a small table
        that the model queries with `<lookup>KEY</lookup>`.

        `envs.host(env, tokenizer, records, limits)` makes it something the
        compiled decode loop can call. At the decode steps where a row's turn
        ends, one `jax.experimental.io_callback` passes the turns to Python,
        and the observations come back as tokens that are fed to the model
        one per step. `envs.Limits` caps the episode: `max_turns` environment
        steps per row, `turn_max_tokens` model tokens per turn (the environment
        steps when a turn reaches it; 0 means no budget), and the widest
        observation, `max_observation_tokens`. `max_new_tokens` caps all of a
        row's tokens, the model's and the environment's together.
        '''),
    code('''
        import re


        class Lookup:
          """Answers `<lookup>KEY</lookup>` from the record's table."""
          name = "lookup"
          turn_end = "</lookup>"
          CALL = re.compile(r"<lookup>(\\w+)</lookup>$")

          def reset(self, record: dict):
            return {"table": record["table"], "asked": ()}

          def step(self, state, turn_text: str) -> envs.HostStep:
            call = self.CALL.search(turn_text)
            if call is None:  # the turn ran out of tokens before a call
              return envs.HostStep(state, "write <lookup>KEY</lookup>\\n", error=True)
            key = call[1]
            state = {**state, "asked": (*state["asked"], key)}
            if key not in state["table"]:
              return envs.HostStep(state, f"no {key[:20]}\\n", error=True)
            return envs.HostStep(state, state["table"][key] + "\\n", reward=1.0)


        records = [
            {"prompt": "Capital of France? ", "table": {"france": "Paris", "spain": "Madrid"}},
            {"prompt": "Water boils at (C)? ", "table": {"water": "100", "ethanol": "78"}},
        ]
        lookup = Lookup()
        state = lookup.reset(records[0])
        for text in ("<lookup>france</lookup>", "<lookup>italy</lookup>", "Paris, I think"):
          print(f"{text!r:28} -> {lookup.step(state, text)}")
        '''),
    md('''
        Now sample with it. The model is a tiny random one from
        `rankjax.testing`, so its text is noise and it never writes
        `</lookup>` by itself: with `turn_max_tokens=8` each of its turns ends
        after 8 tokens, the environment steps anyway and answers with its
        error message. `out.generated` marks the tokens the model wrote;
        observation tokens are shown between ⟦ ⟧ and get no policy loss in
        training. `out.turns` counts the environment steps per row,
        `out.env_reward` sums the environment's rewards and `out.env_errors`
        counts the error turns. A row that reaches `max_new_tokens` stops
        there, in the middle of an observation if need be.
        '''),
    code('''
        from rankjax import inference, sampling, testing

        model = testing.tiny_model("qwen2", vocab_size=tok.vocab_size, hidden_size=32,
                                   num_layers=1, num_heads=2, num_kv_heads=1,
                                   intermediate_size=64)
        limits = envs.Limits(max_turns=3, turn_max_tokens=8, max_observation_tokens=32)
        env = envs.host(lookup, tok, records, limits)
        # Row r of the batch continues prompt r // G, and prompt i is reset from
        # records[i] (the default `example_index` is the prompt's position).
        prompts = [inference.encode_prompt(tok, r["prompt"]) for r in records]
        G = 2
        scfg = sampling.SamplingConfig(max_new_tokens=64, temperature=1.0, num_samples=G,
                                       eos_token_ids=tuple(tok.eos_ids), pad_token_id=tok.pad_id)
        out = sampling.generate(model, prompts, scfg, rng=jax.random.key(0), env=env)


        def transcript(tokens, generated, n: int) -> str:
          """The row's text with observation tokens between ⟦ ⟧."""
          parts, start = [], 0
          for i in range(1, n + 1):
            if i == n or generated[i] != generated[start]:
              text = tok.decode(tokens[start:i])
              parts.append(text if generated[start] else f"⟦{text}⟧")
              start = i
          return "".join(parts)


        tokens, generated, lengths = (np.asarray(x) for x in (out.tokens, out.generated, out.lengths))
        for r in range(len(tokens)):
          print(f"row {r} (prompt {r // G}): turns {int(out.turns[r])}, "
                f"env reward {float(out.env_reward[r])}, error turns {int(out.env_errors[r])}")
          print("   ", repr(transcript(tokens[r], generated[r], int(lengths[r]))))
        '''),
    md('''
        To train against it, put `make_env()` returning `Lookup()` in a file
        and name it in the config: `--config.env.name=path/to/file.py:make_env`.
        The records are then the rows of the run's task.

        ## GRPO with the calculator in the loop

        `configs/grpo_tools_arith.py` is `sft → eval → grpo → eval` on 4- to
        6-digit addition. The SFT demonstrations are short worked answers, and
        60% of them (`data.tool_fraction`) call the calculator instead:
        `1234+56789=` → `<calc>1234+56789</calc>58023\\nanswer: 58023`. GRPO then
        samples 8 answers per prompt with the calculator running inside the
        compiled step (`env.name="calculator"`). The reward is the verifier's
        check of the last `answer:` line, so the calculator's result only
        counts if the model copies it into its answer. Only the tiny size
        overrides anything.
        '''),
    RECIPES,
    READ_JSONL,
    code('''
        overrides = {}
        if TINY:
          overrides.update({
              "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
              "model.num_kv_heads": 1, "model.head_dim": 16, "model.intermediate_size": 64,
              "data.batch_size": 16, "sft.steps": 20, "log_every": 1,
              "grpo.steps": 3, "grpo.num_prompts": 4, "grpo.group_size": 4,
              "eval.num_problems": 8, "eval.num_samples": 4})
        cfg = configure("grpo_tools_arith", overrides)
        print("environment:", cfg.env)
        run = run_lib.execute(cfg, WORKDIR)
        '''),
    md('''
        ## Curves and evaluation

        Every GRPO step with an environment logs `env/turns` (environment
        steps per row), `env/turn_rate` (the share of rows that called the
        tool at least once) and `env/error_rate` (malformed calls per turn)
        next to the reward. Evaluation adds `turn_rate` and `mean_turns` to
        its summary: the evaluated samples run with the calculator too.
        '''),
    code('''
        import matplotlib.pyplot as plt

        rows = [r for r in read_jsonl(WORKDIR / "metrics.jsonl") if r.get("stage") == "grpo"]
        steps = [r["step"] for r in rows]
        fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(12, 4))
        ax_r.plot(steps, [r["reward"] for r in rows], label="mean reward")
        ax_r.set(title="GRPO reward", xlabel="step", ylim=(-0.02, 1.02))
        ax_t.plot(steps, [r["env/turn_rate"] for r in rows], label="rows that called the tool")
        ax_t.plot(steps, [r["env/error_rate"] for r in rows], ls="--", label="malformed calls per turn")
        ax_t.set(title="calculator use", xlabel="step", ylim=(-0.02, 1.02))
        for ax in (ax_r, ax_t):
          ax.grid(alpha=0.3)
          ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(WORKDIR / "multi_turn_curves.png")
        plt.show()

        summary = json.loads((WORKDIR / "summary.json").read_text())
        k = cfg.eval.num_samples
        print(inference.format_table({s: summary[s] for s in summary["evaluated"]},
                                     ["pass@1", f"pass@{k}", "greedy", "turn_rate", "mean_turns"]))
        '''),
    md('''
        To see what the tool adds, run the same recipe without it,
        `--config.env.name=''`: single-turn GRPO from the same SFT model.
        '''),
    OUTPUTS,
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_sft_dpo.ipynb": SFT_DPO,
    "03_grpo_arithmetic.ipynb": GRPO_ARITH,
    "04_real_model_gsm8k.ipynb": GSM8K,
    "05_multi_turn_tools.ipynb": MULTI_TURN,
}


def build_notebook(name: str, cells) -> nbformat.NotebookNode:
  stem = name.removesuffix(".ipynb")
  nb_cells = []
  for i, (kind, source) in enumerate(cells):
    source = source.replace("{badge}", _badge(name)) if kind == "markdown" else source
    cell = (v4.new_markdown_cell(source) if kind == "markdown"
            else v4.new_code_cell(source))
    cell["id"] = f"{stem}-{i:02d}"
    nb_cells.append(cell)
  metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": [], "toc_visible": True},
  }
  if name.startswith("04"):
    metadata.update({"accelerator": "GPU", "colab": {**metadata["colab"], "gpuType": "T4"}})
  nb = v4.new_notebook(cells=nb_cells, metadata=metadata)
  nbformat.validate(nb)
  return nb


def render(nb: nbformat.NotebookNode) -> str:
  return nbformat.writes(nb) + "\n"


def build() -> dict[str, str]:
  """{file name: notebook JSON text} for every notebook."""
  return {name: render(build_notebook(name, cells)) for name, cells in NOTEBOOKS.items()}


def main(argv: list[str]) -> int:
  check = "--check" in argv
  stale = []
  for name, text in build().items():
    path = HERE / name
    if check:
      if not path.exists() or path.read_text(encoding="utf-8") != text:
        stale.append(name)
    else:
      path.write_text(text, encoding="utf-8")
      print("wrote", path)
  if stale:
    print(f"stale (run python colab/build_notebooks.py): {', '.join(stale)}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

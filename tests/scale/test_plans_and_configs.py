"""Every recipe parses and builds abstractly; real-size sharding plans."""

import json
import os
from pathlib import Path

import jax
import pytest
from flax import nnx

from multidevice import run_on_8_devices
from rankjax import config as config_lib, models, run
from rankjax.train import make_optimizer

# config.json of Qwen/Qwen2.5-0.5B-Instruct (architecture fields).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "use_sliding_window": False, "bos_token_id": 151643,
    "eos_token_id": 151645,
}

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_parses_and_builds_abstractly(path, tmp_path):
  cfg = config_lib.validate(config_lib.load(str(path)))
  if cfg.model.path:
    # Real checkpoints come from a local path: build the recipe's
    # architecture abstractly from its config.json (Qwen2.5-0.5B-Instruct's,
    # written here) without any weights.
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_05B))
    mcfg = models.load_config(tmp_path)
  else:
    mcfg = run.model_config(cfg, run.build_tokenizer(cfg))
  abstract = models.create_abstract(mcfg)
  params = nnx.state(abstract, nnx.Param)
  opt = jax.eval_shape(make_optimizer(cfg.optim, 100).init, params)
  assert sum(x.size for x in jax.tree.leaves(params)) == mcfg.num_params
  assert jax.tree.leaves(opt)


def test_overrides_and_errors_name_the_key():
  cfg = config_lib.load(None)
  cfg = config_lib.override(cfg, "optim.learning_rate", "3e-4")
  cfg = config_lib.override(cfg, "data.ops", "add,mul")
  cfg = config_lib.override(cfg, "model.remat", "true")
  assert (cfg.optim.learning_rate, cfg.data.ops, cfg.model.remat) == (3e-4, ("add", "mul"), True)
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'optim.lr'"):
    config_lib.override(cfg, "optim.lr", "1")
  with pytest.raises(config_lib.ConfigError, match="'sft.steps': cannot parse 'ten' as int"):
    config_lib.override(cfg, "sft.steps", "ten")
  with pytest.raises(config_lib.ConfigError, match="'data.batch_size': must be > 0"):
    config_lib.validate(config_lib.override(cfg, "data.batch_size", "0"))
  with pytest.raises(config_lib.ConfigError, match="'data.source': expected one of"):
    config_lib.validate(config_lib.override(cfg, "data.source", "csv"))
  with pytest.raises(config_lib.ConfigError, match=r"'dpo.loss_type': unknown \['sigmoidd'\]"):
    config_lib.validate(config_lib.override(cfg, "dpo.loss_type", "sigmoid,sigmoidd"))
  with pytest.raises(config_lib.ConfigError, match="unknown stage 'sfft'"):
    config_lib.validate(config_lib.override(cfg, "pipeline", "sfft"))


def test_launch_reports_bad_config_before_compiling(capsys):
  from rankjax import launch
  assert launch.main(["--config.grpo.group_size=1", "--config.pipeline=grpo"]) == 2
  assert "grpo.group_size" in capsys.readouterr().err


def test_execute_validates_like_the_command_line(tmp_path):
  from rankjax import run
  cfg = config_lib.override(config_lib.load(None), "grpo.group_size", "1")
  with pytest.raises(config_lib.ConfigError, match="grpo.group_size"):
    run.execute(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # nothing built or written


def test_real_size_sharding_plans_on_8_devices():
  plans = run_on_8_devices(os.path.join(os.path.dirname(__file__), "plan_check.py"),
                           timeout=600)
  for name, p in plans.items():
    print(f"{name}: {p['num_params'] / 1e9:.2f}B params, "
          f"{p['param_bytes_per_device'] / 2**30:.2f} GiB params/device (bf16), "
          f"{p['adam_bytes_per_device'] / 2**30:.2f} GiB AdamW moments/device")
    # fsdp x tensor = 4-way sharding of nearly everything.
    assert p["param_bytes_per_device"] < 0.3 * p["param_bytes_total"]
    assert "fsdp" in p["q_spec"] and "tensor" in p["q_spec"]
  assert plans["llama3_8b"]["num_params"] == 8_030_261_248
  assert plans["qwen25_7b"]["num_params"] == 7_615_616_512

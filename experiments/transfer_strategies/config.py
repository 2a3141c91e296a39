"""All twelve transfer presets under the protocol, on the fraction study's synthetic setting.

Grid: scratch, zero_shot, full_finetune, linear_probe, frozen_encoder, partial_freeze, reuse_bottom,
adapter, lora, prompt, bitfit, patch x seeds 0-4 (60 cells), training on 20% of the target's users
(300 of 1,500) and evaluating on all 1,500. Data, model, pretraining, budget (1,000 steps, early
stopping) and learning-rate grid are those of experiments/fraction_study/config.py, so the
pretraining stages are the same (same hashes). Preset options are the defaults of xrec/config.py
c.transfer (bottom_blocks=1, adapter_dim=16 serial, lora_rank=4 on query/value, num_prompts=4,
patch_dim=16); lr_mult is tuned with the learning rate where it is not redundant with it (presets
that train fresh modules or blocks next to pretrained params).

  python launch.py --config experiments/transfer_strategies/config.py --workdir runs/transfer_strategies
  python -m xrec.report runs/transfer_strategies

Measured numbers and wall time: experiments/transfer_strategies/README.md.
"""

import os

from xrec.train.runner import SEEDS, load_config_module, strategy_grid

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
STRATEGIES = ("scratch", "zero_shot", "full_finetune", "linear_probe", "frozen_encoder", "partial_freeze",
              "reuse_bottom", "adapter", "lora", "prompt", "bitfit", "patch")


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.user_fraction = 0.2
  c.tune.lr_mult = (0.3, 1.0)
  return c


def sweep():
  for seed in SEEDS:
    for strategy in STRATEGIES:
      yield {"transfer.strategy": strategy, "seed": seed, "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": ()}

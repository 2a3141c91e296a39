"""The text-tower comparison at a CPU's cost (issue 30): config.py's study with towers that tune the
top layer of all-MiniLM-L6-v2 only, so that LoRA and full tuning change the same layer and their
difference is the method's, not the depth's:

  frozen     the sentence encoder's cached vectors (model.text.tune="")
  lora_top   LoRA of rank 8 on the top layer's query and value (tune_layers 1)
  full_top   the top layer tuned in full (tune_layers 1)

(the five layers below are cached as token states), under adaptor_only and full_finetune, beside a
fresh ID model (scratch); 5% and 20% of the target's users train, all are evaluated; seeds 0-4 (70
cells); MovieLens-1M cross-genre with the real-data `cpu` preset and one source pretraining (seed
0) for every seed's cells, its text frozen. The top layer in full costs about 0.9 s per 1,000 items
per step on one core (README, cost.py): about 2 s a step for the target's 2,091 movies beside the
sequence model's step, where 6 tuned layers cost 5-6 times that.

  python launch.py --config experiments/text_tower/cpu.py --workdir runs/text_tower_ml1m_cpu --jobs 2 \\
      --config.data.movielens.manual_dir=../shared/data --config.data.movielens.download=false
  python -m xrec.report runs/text_tower_ml1m_cpu
"""

import os

from xrec.train.runner import SEEDS, load_config_module, strategy_variants_grid

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"))
metrics = _study.metrics
TOWERS = {"frozen": {}, "lora_top": {"model.text.tune": "lora", "model.text.tune_layers": 1, "model.text.lora_rank": 8},
          "full_top": {"model.text.tune": "full", "model.text.tune_layers": 1}}


def get_config(arg=None):
  return _study.get_config(arg or "ml1m_cross_genre,cpu,one_pretraining")


def sweep():
  return strategy_variants_grid(_study.rows(TOWERS), "data.user_fraction", _study.FRACTIONS, SEEDS)

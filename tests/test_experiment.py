"""Pretrain -> transfer in one launch: stages, reuse of the pretraining, the table."""

import json
import os

import pytest

from conftest import tiny_config
from xrec.train import experiment


def _config(data_dir):
  c = tiny_config(data_dir)
  c.experiment.mode = "pretrain_transfer"
  c.experiment.strategies = ("scratch", "zero_shot", "full_finetune", "adapter")
  c.experiment.pretrain.update(dict(num_epochs=2.0, batch_size=16, eval_every_steps=5,
                                    checkpoint_every_steps=5, warmup_steps=2))
  c.data.user_fraction = 0.5
  c.train.num_steps = 4
  c.train.eval_every_steps = 2
  return c


def test_pretrain_once_then_every_strategy(data_dir, tmp_path):
  wd = str(tmp_path / "exp")
  out = experiment.run(_config(data_dir), wd)
  rows = {r["strategy"]: r for r in out["rows"]}
  assert list(rows) == ["scratch", "zero_shot", "full_finetune", "adapter"]
  assert rows["zero_shot"]["trainable"] == 0 and rows["zero_shot"]["best_step"] == 0
  assert rows["scratch"]["trainable"] == rows["scratch"]["total"]
  assert 0 < rows["adapter"]["trainable"] < rows["adapter"]["total"]
  pre = json.load(open(os.path.join(wd, "pretrain", "results.json")))
  assert pre["config"]["data"]["domain"] == "source" and pre["config"]["data"]["user_fraction"] == 1.0
  ft = json.load(open(os.path.join(wd, "transfer", "full_finetune", "results.json")))
  assert ft["config"]["data"]["domain"] == "target" and ft["init"]["kind"] == "pretrained"
  assert ft["transfer"]["items"]["overlap"] == 200  # cross-region: every target item is a source item
  assert "| zero_shot | 0 |" in open(os.path.join(wd, "table.md")).read()
  # zero-shot = the pretrained model on the target's validation split, before any target step
  zs = json.load(open(os.path.join(wd, "transfer", "zero_shot", "results.json")))
  first_eval = [json.loads(x) for x in open(os.path.join(wd, "transfer", "full_finetune", "metrics.jsonl"))
                if '"valid"' in x][0]
  assert first_eval["step"] == 0
  assert first_eval["ndcg@10"] == pytest.approx(zs["valid"]["ndcg@10"], abs=1e-6)

  # a rerun reuses every finished stage; a transfer-only change reruns only the transfers
  mtime = os.path.getmtime(os.path.join(wd, "pretrain", "results.json"))
  again = experiment.run(_config(data_dir), wd)
  assert again["rows"] == out["rows"]
  c = _config(data_dir)
  c.experiment.strategies = ("lora",)
  experiment.run(c, wd)
  assert os.path.getmtime(os.path.join(wd, "pretrain", "results.json")) == mtime
  assert os.path.exists(os.path.join(wd, "transfer", "lora", "results.json"))
  # a finished stage with another config is refused, naming the differences
  c = _config(data_dir)
  c.train.num_steps = 5
  with pytest.raises(ValueError, match=r"train.num_steps: 4 -> 5"):
    experiment.run(c, wd)


def test_unknown_mode_lists_valid():
  from xrec.config import base_config
  c = base_config()
  c.experiment.mode = "pretrain_only"
  with pytest.raises(ValueError, match="valid: \\['single', 'pretrain_transfer'\\]"):
    experiment.run(c, "/tmp/never")

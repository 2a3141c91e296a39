"""The files of a finished run's folder: written by the trainer (xrec/train/loop.py), read here for
every reader (transfer and distillation in the trainer, the zoo, model selection, the runner).

  results.json     everything the run measured: config, protocol, metrics, budget, transfer report
  model.json       its encoder: {"model": model config, "num_items", "encoder": class, "roles", "reverse"}
  item_keys.json   its item vocabulary: {"dataset", "domain", "item_keys"}: id i -> item_keys[i - 1]
  transfer_report.json  what a pretrained init loaded at the run's first start (read on resumes)
"""

from __future__ import annotations

import json
import os

import ml_collections

from xrec import models

RESULTS_FILE = "results.json"
MODEL_FILE = "model.json"  # transfer reads the encoder's roles from it
ITEM_KEYS_FILE = "item_keys.json"  # transfer maps item rows by these raw keys
TRANSFER_REPORT_FILE = "transfer_report.json"

_WHY = {MODEL_FILE: "the run's encoder description is needed to rebuild it and map its params by role "
                    "(runs write it when they start)",
        ITEM_KEYS_FILE: "the run's item vocabulary is needed to map item rows by raw key",
        RESULTS_FILE: "the run has not finished (results.json is written at its end)"}


def _read(folder: str, name: str) -> dict:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {_WHY[name]}")
  with open(path) as f:
    return json.load(f)


def read_results(folder: str, missing_ok: bool = False) -> dict | None:
  """The run's results.json (None when missing and `missing_ok`)."""
  if missing_ok and not os.path.isfile(os.path.join(folder, RESULTS_FILE)):
    return None
  return _read(folder, RESULTS_FILE)


def read_model(folder: str) -> dict:
  return _read(folder, MODEL_FILE)


def read_item_keys(folder: str) -> list[str]:
  return _read(folder, ITEM_KEYS_FILE)["item_keys"]


def build_encoder(folder: str):
  """(module, model.json) of the encoder a finished run trained, rebuilt from its model.json."""
  info = read_model(folder)
  return models.build(ml_collections.ConfigDict(info["model"]), int(info["num_items"])), info


def read_transfer_report(folder: str) -> dict | None:
  """What the run's first start loaded from its pretrained init (None: it loaded nothing)."""
  path = os.path.join(folder, TRANSFER_REPORT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)

"""Stages of an experiment: pretraining and transfer configs, stage hashes, cached stage runs.

With `experiment.mode = "pretrain_transfer"` a study cell (xrec/train/runner.py) is the stages

  pretrain   the model trained on `experiment.source_domain` (all its users, `experiment.pretrain.*`)
  transfer   `transfer.strategy` on `experiment.target_domain`, trained on `data.user_fraction` of
             its users, evaluated on its fixed population, initialised from the pretraining's best
             params; one candidate stage per point of the `tune` grid, the best on validation kept

Every stage lives in STAGES_DIR/<hash>/ keyed by the config it depends on (`stage_hash`), so a
finished stage is reused and an unfinished one resumes from its own checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os

import jax

from xrec.config import Train, copy_config, core_config, dotted, with_overrides
from xrec import runindex
from xrec.data import fingerprint
from xrec.train.loop import train_and_evaluate
from xrec.transfer import strategies

log = logging.getLogger("xrec")
MODES = ("single", "pretrain_transfer")


def stage_config(config):
  """A stage's own config: fields only the experiment reads (experiment.*, tune.*) are reset to
  their defaults, so a stage is reused whenever what it depends on is unchanged (e.g. adding a
  strategy or a grid value)."""
  c, core = copy_config(config), core_config()
  with c.unlocked():
    c.experiment = core.experiment
    c.tune = core.tune
  return c


def check_transfer_protocol(config) -> None:
  """The fixed protocol of a transfer table (DESIGN.md), checked before any work: the target's
  budget is a number of optimizer steps, equal for every strategy and fraction."""
  if config.experiment.mode != "pretrain_transfer":
    return
  if config.train.num_steps <= 0:
    raise ValueError(
        "experiment.mode='pretrain_transfer' needs a step budget for the target runs: set "
        "train.num_steps > 0 (e.g. --config.train.num_steps=1000). Budgets in epochs would give "
        "few-shot fractions fewer steps than full ones.")
  if config.train.num_steps < config.train.eval_every_steps:
    raise ValueError(f"train.num_steps={config.train.num_steps} is below one evaluation interval "
                     f"(train.eval_every_steps={config.train.eval_every_steps}); use train.num_steps >= "
                     f"{config.train.eval_every_steps}")
  Train.of(config.train).total_steps(1.0, 1)  # early evaluations inside the budget, before the pretraining runs


def pretrain_config(config):
  """The pretraining stage: the config on experiment.source_domain with all its users, no transfer
  options, augmentation or synthesis, then experiment.pretrain's overrides (any field of the config)."""
  c = stage_config(config)
  with c.unlocked():
    c.data.domain = config.experiment.source_domain
    c.data.user_fraction = 1.0
    c.data.eval_population = "all"  # the source is evaluated on all its users
    c.transfer = strategies.default_transfer_config()  # pretraining uses no transfer options
    # nor the target's data treatments (augmented examples, synthesised interactions): a study that
    # varies them shares one pretraining; experiment.pretrain can still set them
    c.data.augment = core_config().data.augment
    c.data.synthesis = core_config().data.synthesis
    c.train.init_from = ""
    c.train.eval_at_steps = ()  # the target's early evaluations (experiment.pretrain may set its own)
  return with_overrides(c, dotted(config.experiment.pretrain), "experiment.pretrain field")


def transfer_config(config, strategy: str, pretrain_dir: str):
  c = stage_config(config)
  with c.unlocked():
    c.data.domain = config.experiment.target_domain
    c.data.source_domain = config.experiment.source_domain  # the "source" stream, for terms that read it
    c.transfer.strategy = strategy
    c.train.init_from = "" if strategy == "scratch" else os.path.abspath(pretrain_dir)
  return c


# Fields that change how a run is driven or logged, never its results: left out of a stage's hash,
# so a study whose stage was stopped (train.stop_after_steps) or moved to another data cache reuses it.
# (tune.halving / tune.rungs: how a grid is searched, never a stage's result; unhashed so that stages
# computed before these fields existed keep their hashes)
UNHASHED_FIELDS = ("train.stop_after_steps", "train.stop_at_step", "train.progress_bar", "train.log_every_steps",
                   "data.data_dir", "tune.halving", "tune.rungs")
# Fields added after studies ran, left out of a stage's hash while they hold their default (the
# behaviour before they existed), so stages computed before them keep their hashes.
NEUTRAL_DEFAULTS = {"model.output_bias": True, "train.eval_at_steps": [], "tune.extend_at_edge": 0, "model.text.tune": "", "model.text.tune_layers": 1, "model.text.lora_rank": 8,
                    "model.text.tokens": 0, "model.text.arch": [], "model.text.buckets": [],
                    **{f"model.{name}.{field}": default for name in ("sasrec", "bert4rec")
                       for field, default in (("positions", "right"), ("attention_dropout", "output"),
                                              ("kernel_init_std", 0.0))}}
# Fields renamed after studies ran (old name -> new): a stage's hash keeps the old name, so stages
# computed before the rename keep their hashes, and a workdir's stored config reads as the new one.
RENAMED_FIELDS = {"data.files.keys": "data.files.key_scope",
                  "data.scenario.target_files.keys": "data.scenario.target_files.key_scope"}


def renamed(fields: dict) -> dict:
  """Dotted fields of a stored config (study.json, stage.json) under today's names (RENAMED_FIELDS);
  where a config holds both names, the new one's value."""
  out = {f: v for f, v in fields.items() if f not in RENAMED_FIELDS}
  for old, new in RENAMED_FIELDS.items():
    if old in fields and new not in fields:
      out[new] = fields[old]
  return out
# Where a real source's files are: a stage whose inputs are fingerprinted by content
# (xrec/data/fingerprint.py) is the same stage wherever the same bytes lie, so its hash keeps only a
# file's name (the per-file key namespace, data.files.key_scope, is made from it) and no folder (a study
# carried to another machine, launch.py --continue_from, finds its stages' hashes again).
LOCATION_FIELDS = {"data.movielens.manual_dir": None, "data.files.path": os.path.basename,
                   "data.files.item_attributes_path": os.path.basename,
                   "data.scenario.target_files.path": os.path.basename,
                   "data.scenario.target_files.item_attributes_path": os.path.basename}
STAGE_KINDS = ("single", "pretrain", "transfer")


def _drop_field(tree: dict, dotted: str) -> None:
  *parents, leaf = dotted.split(".")
  for name in parents:
    tree = tree.get(name, {})
  tree.pop(leaf, None)


def stage_hash(config, depends_on: dict[str, str] | None = None) -> str:
  """Hash of what a stage's results depend on: its own config (UNHASHED_FIELDS left out) with
  train.init_from replaced by the hash of the stage it loads, so a moved study keeps its hashes and
  a changed pretraining changes every transfer built on it, and the sha256 of every data file the
  stage reads (xrec/data/fingerprint.py), so an edited file never reuses a stage computed from the
  old one, and the same file in another folder does (LOCATION_FIELDS)."""
  tree = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored in results.json
  for field in UNHASHED_FIELDS:
    _drop_field(tree, field)
  for old, new in RENAMED_FIELDS.items():
    *parents, leaf = new.split(".")
    node = tree
    for name in parents:
      node = node.get(name, {})
    if leaf in node:
      node[old.rsplit(".", 1)[1]] = node.pop(leaf)
  for field, default in NEUTRAL_DEFAULTS.items():
    *parents, leaf = field.split(".")
    node = tree
    for name in parents:
      node = node.get(name, {})
    if node.get(leaf, default) == default:
      node.pop(leaf, None)
  if depends_on:
    tree["train"]["init_from"] = {name: depends_on[name] for name in sorted(depends_on)}
  inputs = fingerprint.digests(config.data)
  if inputs:  # a real source: the content of the files it reads (an edited file is another stage)
    tree["data_input_sha256"] = inputs
    for field, keep in LOCATION_FIELDS.items():
      *parents, leaf = field.split(".")
      node = tree
      for name in parents:
        node = node.get(name, {})
      if leaf in node:
        if keep is None or not node[leaf]:
          node.pop(leaf)
        else:
          node[leaf] = keep(os.path.normpath(node[leaf]))
  text = json.dumps(tree, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _stage_lock(stage_dir: str):
  """One job per stage: cells that share a pretraining, launched at once on a cluster, wait for it
  instead of training it twice into the same checkpoints. Within one multi-process job only the
  main process holds the lock (the others run the stage with it; a lock on every process would
  serialise them and their collectives would time out)."""
  os.makedirs(os.path.dirname(stage_dir), exist_ok=True)
  if jax.process_index() != 0:
    yield
    return
  with runindex.exclusive_lock(stage_dir + ".lock"):
    yield


def run_cached_stage(config, stages_dir: str, kind: str, depends_on: dict[str, str] | None = None) -> dict:
  """Runs (or reuses) one stage in STAGES_DIR/<hash>/ and returns its results.json with the stage's
  "stage" = {"kind", "hash", "dir", "reused"}. An unfinished stage resumes from its own
  checkpoints; a stopped one (train.stop_after_steps) returns {"stopped_at_step", "stage"}."""
  if kind not in STAGE_KINDS:
    raise ValueError(f"Unknown stage kind {kind!r}; valid: {list(STAGE_KINDS)}")
  digest = stage_hash(config, depends_on)
  stage_dir = os.path.join(stages_dir, digest)
  info = {"kind": kind, "hash": digest, "dir": stage_dir, "reused": True}
  path = os.path.join(stage_dir, "results.json")
  with _stage_lock(stage_dir):
    if os.path.exists(path):
      log.info("reusing finished %s stage %s", kind, digest)
      with open(path) as f:
        return {**json.load(f), "stage": info}
    os.makedirs(stage_dir, exist_ok=True)
    if jax.process_index() == 0:
      runindex.write_json_atomic(os.path.join(stage_dir, "stage.json"),
                                 {"kind": kind, "hash": digest, "depends_on": depends_on or {},
                                  "config": json.loads(json.dumps(config.to_dict()))})
    log.info("running %s stage %s", kind, digest)
    results = train_and_evaluate(config, stage_dir)
  return {**results, "stage": {**info, "reused": False}}

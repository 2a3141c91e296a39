"""Pretrain -> transfer in one experiment.

With `experiment.mode = "pretrain_transfer"`, one launch runs

  WORKDIR/pretrain/              SASRec trained on `experiment.source_domain` (all its users)
  WORKDIR/transfer/<strategy>/   one run per `experiment.strategies` on `experiment.target_domain`
                                 (few-shot by `data.user_fraction`), initialised from the
                                 pretraining's best params (train.init_from) by the strategy

and prints one table (strategy, trainable params, NDCG@10, HR@10). A stage whose
`results.json` holds the same config is reused, so the pretraining runs once
for every strategy and a rerun after a kill continues where it stopped (an
unfinished stage resumes from its own checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os

from xrec.config import base_config
from xrec.train import checkpoint as ckpt
from xrec.train import writer as W
from xrec.train.loop import train_and_evaluate

log = logging.getLogger("xrec")
MODES = ("single", "pretrain_transfer")


def _single_run(config):
  """A stage's own config: fields only the experiment reads are reset to their defaults, so a
  stage is reused whenever what it depends on is unchanged (e.g. adding a strategy)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.experiment = base_config().experiment
  return c


def pretrain_config(config):
  c = _single_run(config)
  with c.unlocked():
    c.data.domain = config.experiment.source_domain
    c.data.user_fraction = 1.0
    c.transfer = base_config().transfer  # pretraining uses no transfer options
    c.train.init_from = ""
    p = config.experiment.pretrain
    c.train.update(dict(num_epochs=p.num_epochs, num_steps=0, batch_size=p.batch_size,
                        eval_every_steps=p.eval_every_steps, early_stopping_patience=p.early_stopping_patience,
                        checkpoint_every_steps=p.checkpoint_every_steps))
    c.optim.update(dict(lr=p.lr, warmup_steps=p.warmup_steps))
  return c


def transfer_config(config, strategy: str, pretrain_dir: str):
  c = _single_run(config)
  with c.unlocked():
    c.data.domain = config.experiment.target_domain
    c.transfer.strategy = strategy
    c.train.init_from = "" if strategy == "scratch" else os.path.abspath(pretrain_dir)
  return c


def _config_diff(a: dict, b: dict, prefix="") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
  return out


def run_stage(config, workdir: str) -> dict:
  """Reuses a finished stage with the same config; refuses one finished with another config."""
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      done = json.load(f)
    want = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored
    diff = _config_diff(done.get("config", {}), want)
    if not diff:
      log.info("reusing finished stage %s", workdir)
      return done
    raise ValueError(f"{workdir} holds a finished run with another config; use a new workdir or "
                     f"delete it. Differences (stored -> requested):\n  " + "\n  ".join(diff[:20]))
  return train_and_evaluate(config, workdir)


# Fields that change how a run is driven or logged, never its results: left out of a stage's hash,
# so a study whose stage was stopped (train.stop_after_steps) or moved to another data cache reuses it.
UNHASHED_FIELDS = ("train.stop_after_steps", "train.progress_bar", "train.log_every_steps", "data.data_dir")
STAGE_KINDS = ("single", "pretrain", "transfer")


def _drop_field(tree: dict, dotted: str) -> None:
  *parents, leaf = dotted.split(".")
  for name in parents:
    tree = tree.get(name, {})
  tree.pop(leaf, None)


def stage_hash(config, depends_on: dict[str, str] | None = None) -> str:
  """Hash of what a stage's results depend on: its own config (UNHASHED_FIELDS left out) with
  train.init_from replaced by the hash of the stage it loads, so a moved study keeps its hashes and
  a changed pretraining changes every transfer built on it."""
  tree = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored in results.json
  for field in UNHASHED_FIELDS:
    _drop_field(tree, field)
  if depends_on:
    tree["train"]["init_from"] = {name: depends_on[name] for name in sorted(depends_on)}
  text = json.dumps(tree, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _stage_lock(stage_dir: str):
  """One process per stage: cells that share a pretraining, launched at once on a cluster, wait
  for it instead of training it twice into the same checkpoints."""
  os.makedirs(os.path.dirname(stage_dir), exist_ok=True)
  with open(stage_dir + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


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
    W.write_json_atomic(os.path.join(stage_dir, "stage.json"),
                        {"kind": kind, "hash": digest, "depends_on": depends_on or {},
                         "config": json.loads(json.dumps(config.to_dict()))})
    log.info("running %s stage %s", kind, digest)
    results = train_and_evaluate(config, stage_dir)
  return {**results, "stage": {**info, "reused": False}}


def table(rows: list[dict]) -> str:
  """Test NDCG@10 / HR@10 at the best validation step, and that validation NDCG@10."""
  lines = ["| strategy | trainable params | total params | NDCG@10 | HR@10 | valid NDCG@10 | best step |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['strategy']} | {r['trainable']:,} | {r['total']:,} | {r['ndcg@10']:.4f} | "
                 f"{r['hr@10']:.4f} | {r['valid_ndcg@10']:.4f} | {r['best_step']} |")
  return "\n".join(lines)


def run_pretrain_transfer(config, workdir: str) -> dict:
  if not config.experiment.strategies:
    raise ValueError("experiment.strategies is empty; name at least one transfer strategy")
  pre_dir = os.path.join(workdir, "pretrain")
  pre = run_stage(pretrain_config(config), pre_dir)
  log.info("pretraining: test ndcg@10=%.4f on %s", pre["test"]["ndcg@10"], config.experiment.source_domain)
  rows = []
  for strategy in config.experiment.strategies:
    res = run_stage(transfer_config(config, strategy, pre_dir), os.path.join(workdir, "transfer", strategy))
    budget = res["transfer"]
    rows.append({"strategy": strategy, "trainable": budget["trainable"], "total": budget["total"],
                 "stored_bytes": budget["stored_bytes"], "ndcg@10": res["test"]["ndcg@10"],
                 "hr@10": res["test"]["hr@10"], "valid_ndcg@10": res["valid"]["ndcg@10"],
                 "best_step": res["best_step"]})
  summary = {
      "pretrain": {"domain": config.experiment.source_domain, "valid": pre["valid"], "test": pre["test"]},
      "target": {"domain": config.experiment.target_domain, "user_fraction": config.data.user_fraction},
      "protocol": pre["protocol"], "rows": rows, "table": table(rows),
  }
  W.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(summary["table"] + "\n")
  return summary


def run(config, workdir: str) -> dict:
  mode = config.experiment.mode
  if mode not in MODES:
    raise ValueError(f"Unknown experiment.mode {mode!r}; valid: {list(MODES)}")
  if mode == "single":
    return train_and_evaluate(config, workdir)
  return run_pretrain_transfer(config, workdir)

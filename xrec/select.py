"""Choosing a pretrained model for a target without fine-tuning them all (issue 13).

  python -m xrec.select --target configs/sasrec_synthetic.py --set data.domain=target \
      --zoo ~/.xrec/zoo.json --out runs/select [--proxy_steps 50]

For every zoo entry (python -m xrec.zoo) and the target's data (the target config's data.*):
the item overlap by raw key, and on the entry's frozen representations of the target's sequences
(its encoder's last state; target items the entry does not know are read as padding) the
zero-shot validation NDCG@10 over the target's catalogue (n/a without overlap), a linear probe's
validation NDCG@10, LogME, the centred alignment of the representations with the next-item labels
(label CKA), the MMD between its representations of its own source sequences and of the target's,
the linear CKA between its representations of the same users' source and target histories (user
CKA; both n/a when the source data cannot be read here, user CKA also with fewer than 10 users in
both domains), and with --proxy_steps a short fine-tuning run's validation NDCG@10.
Each is ranked, a combined score is the mean rank over the estimators, and the table marks the
quality-vs-cost Pareto front (combined score vs params). Writes select.md and select.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xrec import runfiles, zoo
from xrec.config import with_overrides
from xrec.data import pipeline
from xrec.evaluate import metrics, transferability
from xrec.train import checkpoint as ckpt
from xrec.train import experiment, loop, runner
from xrec.transfer import vocab

ESTIMATORS = ("zero_shot_ndcg@10", "probe_ndcg@10", "log_me", "label_cka", "user_cka", "neg_mmd",
              "proxy_ndcg@10")
# neg_mmd: -MMD^2 between the entry's representations of its source sequences and of the target's
# (closer = higher); user_cka: linear CKA between its representations of the same users' source and
# target histories (users in both domains only)
MIN_SHARED_USERS = 10  # fewer users in both domains: user_cka is n/a


def _examples(domain: pipeline.DomainSequences, max_len: int, max_train: int = 4000):
  """(train inputs, train labels, valid inputs, valid labels) in target ids: every prefix of each
  training user's training part predicts the item after it (a deterministic sample of at most
  `max_train` such examples; with 15 training users one example per user would leave the probe and
  LogME a handful of labels); each evaluated user's validation target from its history (the
  protocol's validation split)."""
  train_x, train_y, valid_x, valid_y = [], [], [], []
  for u in domain.train_users:
    part = domain.sequence(u)[:-2]
    for end in range(1, len(part)):
      train_x.append(pipeline.right_align(part[:end], max_len))
      train_y.append(part[end])
  if not train_x:
    raise ValueError(f"the target {domain.name!r} has no training examples (its training users' sequences "
                     "are too short to hold out a validation and a test item and still predict one)")
  if len(train_x) > max_train:
    keep = np.sort(np.random.default_rng(0).permutation(len(train_x))[:max_train])
    train_x, train_y = [train_x[i] for i in keep], [train_y[i] for i in keep]
  for u in domain.eval_users:
    seq = domain.sequence(u)
    valid_x.append(pipeline.right_align(seq[:-2], max_len))
    valid_y.append(seq[-2])
  return (np.stack(train_x), np.asarray(train_y), np.stack(valid_x), np.asarray(valid_y))


def _in_batches(fn, x, size: int = 256):
  out = []
  for start in range(0, len(x), size):
    chunk = x[start:start + size]
    pad = size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]) if pad else chunk
    out.append(np.asarray(fn(padded))[:len(chunk)])
  return np.concatenate(out)


def _ndcg_at_10(scores, labels, history) -> float:
  """Full-ranking NDCG@10 of labels [n] among the target's items (scores [n, items + 1]), each
  user's history masked: the evaluator's own ranking (metrics.target_rank)."""
  num_items = scores.shape[1] - 1
  rank = metrics.target_rank(jnp.asarray(scores), jnp.asarray(labels), num_items, jnp.asarray(history))
  return metrics.finalize(metrics.metric_sums(rank, jnp.ones(len(labels)), (10,)))["ndcg@10"]


def _source_domain(path: str):
  """The domain a zoo entry was trained on, from its results.json's data config (None when it
  cannot be read here, e.g. a real dataset whose files are elsewhere)."""
  try:
    data = ml_collections.ConfigDict(runfiles.read_results(path)["config"]["data"])
    return pipeline.load_domain(data)
  except (OSError, ValueError, KeyError):
    return None


def estimate(entry_name: str, entry: dict, config, domain, examples, out_dir: str, proxy_steps: int = 0) -> dict:
  """Every estimator's value and wall seconds for one zoo entry on the target."""
  path = entry["path"]
  module, info = runfiles.build_encoder(path)
  params, _ = ckpt.restore_best_params(path)
  keys = runfiles.read_item_keys(path)
  position = {k: i + 1 for i, k in enumerate(keys)}
  to_entry = np.zeros(domain.num_items + 1, np.int64)  # target id -> the entry's id (0: unknown)
  to_entry[1:] = [position.get(k, 0) for k in domain.item_keys]
  overlap = vocab.item_overlap(keys, domain.item_keys, domain.item_frequency)
  train_x, train_y, valid_x, valid_y = examples
  max_len = int(info["model"]["max_len"])

  def fit(x):  # target ids, right-aligned to the target's max_len -> the entry's ids and length
    x = to_entry[x][:, -max_len:]
    return np.concatenate([np.zeros((len(x), max_len - x.shape[1]), x.dtype), x], 1).astype(np.int32)

  features = jax.jit(lambda p, x: module.apply(
      {"params": p}, x, method=lambda m, x: m.last_states(m.scoring_inputs(x))).astype(jnp.float32))
  row = {"name": entry_name, "encoder": entry["encoder"], "params": entry["params"],
         "stored_bytes": entry["stored_bytes"], "eval_users_per_second": entry.get("eval_users_per_second"),
         "item_overlap": overlap.get("interaction_share", overlap["item_share"]), "seconds": {}}
  t = time.time()
  train_f = _in_batches(lambda x: features(params, x), fit(train_x))
  valid_f = _in_batches(lambda x: features(params, x), fit(valid_x))
  represent = time.time() - t
  t = time.time()
  if overlap["overlap_items"] > 0:
    score = jax.jit(lambda p, x: module.apply({"params": p}, x, method="score_last"))
    entry_scores = _in_batches(lambda x: score(params, x), fit(valid_x))
    scores = np.where(to_entry[None, :] > 0, entry_scores[:, to_entry], -np.inf)
    row["zero_shot_ndcg@10"] = _ndcg_at_10(scores, valid_y, valid_x)
  else:
    row["zero_shot_ndcg@10"] = None  # n/a: the entry knows none of the target's items
  row["seconds"]["zero_shot_ndcg@10"] = time.time() - t
  t = time.time()
  probe = transferability.linear_probe(train_f, train_y, valid_f, valid_y, domain.num_items + 1)
  row["probe_ndcg@10"] = probe["ndcg@10"]
  row["seconds"]["probe_ndcg@10"] = represent + time.time() - t
  t = time.time()
  row["log_me"] = transferability.log_me(train_f, train_y)
  row["seconds"]["log_me"] = represent + time.time() - t
  t = time.time()
  row["label_cka"] = transferability.label_cka(train_f, train_y)
  row["seconds"]["label_cka"] = represent + time.time() - t
  t = time.time()
  source = _source_domain(path)
  row["mmd"] = row["neg_mmd"] = row["user_cka"] = None  # n/a: the source data is not readable here
  row["shared_users"] = None
  if source is not None:  # the entry's own pretraining data, encoded the same way
    sample = np.random.default_rng(0).permutation(source.eval_users)[:len(valid_x)][:1000]
    source_x = np.stack([pipeline.right_align(source.sequence(u)[:-2], max_len) for u in sample]).astype(np.int32)
    source_f = _in_batches(lambda x: features(params, x), source_x)
    row["mmd"] = transferability.mmd_rbf(source_f, valid_f[:1000])
    row["neg_mmd"] = -row["mmd"]
  row["seconds"]["mmd"] = represent + time.time() - t
  t = time.time()
  if source is not None:  # the users in both domains: their source history vs their target history
    in_source = {k: i for i, k in enumerate(source.user_keys)}
    pairs = [(i, in_source[domain.user_keys[u]]) for i, u in enumerate(domain.eval_users)
             if domain.user_keys[u] in in_source][:2000]
    row["shared_users"] = len(pairs)
    if len(pairs) >= MIN_SHARED_USERS:
      theirs = np.stack([pipeline.right_align(source.sequence(s)[:-2], max_len) for _, s in pairs]).astype(np.int32)
      row["user_cka"] = transferability.linear_cka(_in_batches(lambda x: features(params, x), theirs),
                                                   valid_f[[i for i, _ in pairs]])
  row["seconds"]["user_cka"] = represent + time.time() - t
  row["proxy_ndcg@10"] = None
  if proxy_steps > 0:
    t = time.time()
    proxy = with_overrides(config, {"train.init_from": path, "transfer.strategy": "full_finetune",
                                    "train.num_steps": proxy_steps, "train.eval_every_steps": proxy_steps,
                                    "train.eval_at_steps": (), "train.checkpoint_every_steps": proxy_steps,
                                    "train.progress_bar": False})
    with proxy.unlocked():  # the candidate's own architecture, fine-tuned whole
      proxy.model = ml_collections.ConfigDict(info["model"])
    # a cached stage like every run of the runner (hash of its config, lock, resumable): a rerun of
    # the selection reuses a finished proxy instead of training it again
    results = experiment.run_cached_stage(proxy, os.path.join(out_dir, "proxy_stages"), "transfer",
                                          {"pretrained": path})
    row["proxy_ndcg@10"] = results["valid"]["ndcg@10"]
    row["seconds"]["proxy_ndcg@10"] = time.time() - t
  return row


def rank_rows(rows: list[dict]) -> list[dict]:
  """Each estimator's rank (1 = best; n/a rows unranked), the combined score (mean rank over the
  estimators a row has) and the Pareto front of combined score vs params."""
  for name in ESTIMATORS:
    ranked = sorted((r for r in rows if r.get(name) is not None), key=lambda r: -r[name])
    for i, r in enumerate(ranked, 1):
      r.setdefault("ranks", {})[name] = i
  for r in rows:
    ranks = list((r.get("ranks") or {}).values())
    r["combined_rank"] = float(np.mean(ranks)) if ranks else None
  for r in rows:
    r["pareto"] = r["combined_rank"] is not None and not any(
        o is not r and o["combined_rank"] is not None and o["combined_rank"] <= r["combined_rank"]
        and o["params"] <= r["params"] and (o["combined_rank"] < r["combined_rank"] or o["params"] < r["params"])
        for o in rows)
  return sorted(rows, key=lambda r: (r["combined_rank"] is None, r["combined_rank"] or 0))


def markdown(rows: list[dict]) -> str:
  def fmt(v, digits=4):
    return "n/a" if v is None else f"{v:.{digits}f}"
  lines = ["| name | encoder | params | stored MB | eval users/s | item overlap | zero-shot ndcg@10 | probe ndcg@10 "
           "| LogME | label CKA | user CKA | MMD to source | proxy ndcg@10 | combined rank | Pareto "
           "| estimator seconds |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
  for r in rows:
    secs = ", ".join(f"{k.split('_ndcg')[0]} {v:.1f}" for k, v in r["seconds"].items())
    speed = r.get("eval_users_per_second")
    lines.append(f"| {r['name']} | {r['encoder']} | {r['params']:,} | {r['stored_bytes'] / 1e6:.2f} | "
                 f"{'-' if speed is None else f'{speed:,.0f}'} | {fmt(r['item_overlap'], 3)} | "
                 f"{fmt(r['zero_shot_ndcg@10'])} | {fmt(r['probe_ndcg@10'])} | {fmt(r['log_me'])} | "
                 f"{fmt(r['label_cka'])} | {fmt(r['user_cka'])} | {fmt(r['mmd'])} | "
                 f"{fmt(r['proxy_ndcg@10'])} | {fmt(r['combined_rank'], 2)} | {'**yes**' if r['pareto'] else ''} | "
                 f"{secs} |")
  return "\n".join(lines)


def select(config, catalog: str | None, out_dir: str, proxy_steps: int = 0) -> list[dict]:
  entries = zoo.read_catalog(catalog)["entries"]
  if not entries:
    raise ValueError(f"the zoo {zoo.catalog_path(catalog)} has no entries (python -m xrec.zoo add WORKDIR)")
  for name in entries:
    zoo.resolve(name, catalog)  # every checkpoint still there, before any work
  loop.validate(config)
  domain = pipeline.load_domain(config.data)
  examples = _examples(domain, int(config.model.max_len))
  rows = rank_rows([estimate(name, entries[name], config, domain, examples, out_dir, proxy_steps)
                    for name in sorted(entries)])
  os.makedirs(out_dir, exist_ok=True)
  text = markdown(rows)
  with open(os.path.join(out_dir, "select.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out_dir, "select.json"), "w") as f:
    json.dump({"target": {"dataset": config.data.name, "domain": domain.name, "items": domain.num_items,
                          "training_users": int(len(domain.train_users)),
                          "evaluated_users": int(len(domain.eval_users))},
               "zoo": zoo.catalog_path(catalog), "candidates": rows}, f, indent=2)
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m xrec.select", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--target", required=True, help="the target's config file (configs/x.py[:arg])")
  ap.add_argument("--set", action="append", default=[], help="a config override field=value (repeatable)")
  ap.add_argument("--zoo", default=None, help="zoo catalog (default $XREC_ZOO or ~/.xrec/zoo.json)")
  ap.add_argument("--out", required=True, help="folder for select.md and select.json")
  ap.add_argument("--proxy_steps", type=int, default=0, help="also fine-tune each candidate this many steps")
  args = ap.parse_args(argv)
  try:
    path, arg = runner.config_file_of(args.target)
    config = runner.load_config_module(path).get_config(arg)
    overrides = {}
    for item in args.set:
      field, sep, value = item.partition("=")
      if not sep:
        raise ValueError(f"--set {item!r}: expected field=value")
      try:
        overrides[field] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        overrides[field] = value
    config = with_overrides(config, overrides)
    rows = select(config, args.zoo, args.out, args.proxy_steps)
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"xrec.select: error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  print(markdown(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Overlapping users (strategies.RUNTIME: cross_user): the target's users also read their
source-domain history through the pretrained source model. Sizes the inserted parts from the
pretrained model, attaches each user's source history to the target data (xrec/data/cross_user.py)
and, in prefix mode, fills the frozen per-user representations after the load."""

from __future__ import annotations

import copy
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from xrec import runfiles
from xrec import sharding
from xrec.data import cross_user, pipeline
from xrec.train import checkpoint as ckpt
from xrec.train.hooks.base import Hook

log = logging.getLogger("xrec")


class CrossUser(Hook):
  name = "cross_user"

  def configure(self, run) -> dict:
    """transfer.cross_user.rows / source_dim: the pretrained model's vocab (merged: source items are
    read through a copy of its item table) or the target's users + 1 (prefix: one frozen
    representation per user), and the pretrained encoder's width."""
    spec = run.spec
    if not spec.data.source_domain or not spec.train.init_from:
      raise ValueError("transfer.strategy='cross_user' reads each user's source-domain history through the "
                       "pretrained source model: it needs data.source_domain and train.init_from (a "
                       "pretrain -> transfer experiment sets both)")
    module, info = runfiles.build_encoder(spec.train.init_from)
    rows = module.vocab_size if spec.transfer.cross_user.mode == "merged" else 2 * run.domain.num_users + 1
    return {"transfer.cross_user.rows": int(rows), "transfer.cross_user.source_dim": int(info["model"]["embed_dim"])}

  def prepare_data(self, run) -> None:
    spec = run.spec
    run.domain = cross_user_inputs(spec.data, spec.train.init_from, spec.transfer.cross_user.mode, spec.model.max_len,
                                   run.domain, run.module.vocab_size)

  def after_init(self, run, state: dict) -> dict:
    if run.spec.transfer.cross_user.mode != "prefix" or run.init.kind != "pretrained":
      return state
    params = sharding.to_host(state["params"])
    params["cross"]["user_table"] = prefix_user_table(run.spec.train.init_from, run.domain,
                                                      params["cross"]["user_table"].shape[0])
    return {**state, "params": jax.device_put(params, run.param_sh)}

  def results(self, run, final) -> dict:
    return {"transfer": {"cross_user": run.domain.cross.report}}


def cross_user_inputs(data_cfg, pretrained: str, mode: str, max_len: int, domain, vocab_size: int):
  """The target domain with its users' source histories (data_cfg.source_domain) attached
  (xrec/data/cross_user.py), read through the pretrained run's item vocabulary (`pretrained`: its
  folder; mode: transfer.cross_user.mode)."""
  source_cfg = copy.deepcopy(data_cfg)
  with source_cfg.unlocked():
    source_cfg.update(dict(domain=data_cfg.source_domain, user_fraction=1.0, eval_population="all"))
  source = pipeline.load_domain(source_cfg)
  pretrained_keys = runfiles.read_item_keys(pretrained)
  if pretrained_keys != source.item_keys:
    raise ValueError(f"transfer.strategy='cross_user': the pretrained model {pretrained!r} was not "
                     f"trained on domain {source.name!r}'s items (its item vocabulary differs), so it cannot "
                     "read that domain's histories; pretrain on data.source_domain")
  cross = cross_user.CrossUserInputs(domain, source, mode, vocab_size, max_len)
  log.info("cross_user (%s): %d of %d target users have a source history in %r (%.1f%%)", cross.mode,
           cross.report["users_with_source_history"], domain.num_users, source.name,
           100 * cross.report["user_overlap"])
  return dataclasses.replace(domain, cross=cross)


def prefix_user_table(pretrained: str, domain, rows: int) -> np.ndarray:
  """[rows, source embed] the frozen prefix representations: the pretrained source encoder's last
  state over each target user's source history, one row for its training window and one for its
  evaluation (CrossUserInputs.prefix_row; zero without history). pretrained: its run folder."""
  module, info = runfiles.build_encoder(pretrained)
  params, _ = ckpt.restore_best_params(pretrained)
  max_len = int(info["model"]["max_len"])
  table = np.zeros((rows, int(info["model"]["embed_dim"])), np.float32)
  cross = domain.cross
  wanted = [(cross.prefix_row(u, kind), cross.prefix_history(u, kind))
            for u in range(domain.num_users) for kind in ("train", "eval")]
  wanted = [(row, history) for row, history in wanted if len(history)]
  encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode")[:, -1].astype(jnp.float32))
  for start in range(0, len(wanted), 256):
    chunk = wanted[start:start + 256]
    x = np.stack([pipeline.right_align(history, max_len) for _, history in chunk])
    pad = 256 - len(chunk)  # one shape, one compilation
    x = np.concatenate([x, np.zeros((pad, max_len), np.int32)]) if pad else x
    table[np.asarray([row for row, _ in chunk])] = np.asarray(encode(params, x))[:len(chunk)]
  return table

"""Distillation (strategies.RUNTIME: distill): a frozen teacher, any finished run (transfer.distill.teacher,
else train.init_from) that knows the target's items (at least transfer.min_item_overlap of its
interactions; distillation covers the items it knows), provides the objective's "teacher" stream; its
params ride in the train state as constants (replicated, never checkpointed) and results describe it."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from xrec import models
from xrec import runfiles
from xrec import sharding
from xrec.models import common
from xrec.train import checkpoint as ckpt
from xrec.train import objectives
from xrec.train.hooks.base import Hook
from xrec.transfer import vocab


class Distill(Hook):
  name = "distill"
  provides = ("teacher",)

  def configure(self, run) -> dict:
    """Reads the teacher; its width sizes the student's projection head (hidden-state matching)."""
    spec = run.spec
    self.teacher = read_teacher(spec.transfer.distill.teacher or spec.train.init_from, spec.model, run.domain,
                                spec.transfer.min_item_overlap)
    return {"transfer.distill.teacher_embed_dim": self.teacher["embed_dim"]}

  def frozen(self, run, state: dict):
    return jax.device_put({"params": self.teacher["params"], "id_map": jnp.asarray(self.teacher["id_map"])},
                          sharding.replicated(run.mesh))

  def objective_inputs(self, state: dict) -> dict:
    frozen = state["frozen"][self.name]
    return {"teacher": objectives.Teacher(self.teacher["module"], frozen["params"], frozen["id_map"])}

  def results(self, run, final) -> dict:
    return {"transfer": {"teacher": self.teacher["info"]}}


def read_teacher(path: str, model_cfg, domain, min_item_overlap: float = 0.0) -> dict:
  """The distillation teacher: a finished run (`path`: transfer.distill.teacher, else
  train.init_from), its encoder, best params and the map from the student's item ids (of the model
  `model_cfg` builds) to the teacher's, by raw key (0 for the target's items it does not know:
  distillation covers the items it knows). A teacher that knows less than `min_item_overlap`
  (transfer.min_item_overlap) of the target's interactions, or none of its items, is refused."""
  if not path:
    raise ValueError("transfer.strategy='distill' needs a teacher: set transfer.distill.teacher (a finished "
                     "run's workdir) or train.init_from")
  if not ckpt.has_best_params(path):
    raise FileNotFoundError(f"distillation teacher {path!r} has no best params under {os.path.join(path, 'best')}")
  module, info = runfiles.build_encoder(path)
  if not module.causal:
    raise ValueError(f"the distillation teacher {path!r} is a {type(module).__name__}, a bidirectional encoder: its "
                     "outputs on causal inputs are no next-item predictions; use a causal teacher (SASRec, "
                     "GRU4Rec, NextItNet, HSTU)")
  teacher_keys = runfiles.read_item_keys(path)
  position = {key: i + 1 for i, key in enumerate(teacher_keys)}
  overlap = vocab.item_overlap(teacher_keys, domain.item_keys, domain.item_frequency)
  share = overlap["interaction_share"]
  if not overlap["overlap_items"] or share < min_item_overlap:
    missing = [k for k in domain.item_keys if k not in position]
    raise ValueError(f"the distillation teacher {path!r} was trained on another item vocabulary: it knows "
                     f"{overlap['overlap_items']} of the target's {domain.num_items} items ({100 * share:.6g}% of its "
                     f"interactions; not e.g. {missing[:3]}), below transfer.min_item_overlap={min_item_overlap:g}; "
                     "distill from a teacher that knows the target's items (e.g. a fine-tuned target run)")
  id_map = np.zeros(models.build(model_cfg, domain.num_items).vocab_size, np.int32)
  id_map[1:domain.num_items + 1] = [position.get(k, 0) for k in domain.item_keys]
  params, _ = ckpt.restore_best_params(path)
  results = runfiles.read_results(path, missing_ok=True) or {}
  described = {"path": path, "encoder": type(module).__name__, "param_count": common.param_count(params),
               "stored_bytes": int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))),
               "test": (results.get("test") or {}).get("ndcg@10"),
               "eval_users_per_second": (results.get("throughput") or {}).get("eval_users_per_second"),
               "item_overlap": overlap}
  return {"module": module, "params": params, "id_map": id_map, "info": described,
          "embed_dim": int(info["model"].get("embed_dim", 0))}

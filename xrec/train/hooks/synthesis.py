"""Synthesised interactions (data.synthesis.num_items > 0): a finished run generates pseudo items
that lengthen the target's short training sequences (xrec/train/synthesis.py); results report it."""

from __future__ import annotations

import dataclasses
import logging
import os

from xrec import runfiles
from xrec.train import checkpoint as ckpt
from xrec.train import synthesis
from xrec.train.hooks.base import Hook

log = logging.getLogger("xrec")


class Synthesis(Hook):
  name = "synthesis"

  @classmethod
  def wanted(cls, spec, runtime) -> bool:
    return spec.data.synthesis.num_items > 0

  def prepare_data(self, run) -> None:
    run.domain, self.report = synthesise(run.spec.data.synthesis, run.spec.train.init_from, run.domain)

  def results(self, run, final) -> dict:
    return {"transfer": {"synthesis": self.report}}


def synthesise(cfg, init_from: str, domain):
  """(domain with the pseudo-interactions data.synthesis (`cfg`) asks for, report): the generator is
  a finished run (cfg.model, else `init_from`)."""
  synthesis.check(cfg)
  if domain.cross is not None:
    raise ValueError("data.synthesis does not combine with transfer.strategy='cross_user' (its inputs read "
                     "the real source history); set data.synthesis.num_items=0")
  path = cfg.model or init_from
  if not path:
    raise ValueError("data.synthesis.num_items > 0 needs a generator: set data.synthesis.model (a finished "
                     "run's workdir; backward: one trained with data.reverse=True) or train.init_from")
  if not ckpt.has_best_params(path):
    raise FileNotFoundError(f"data.synthesis generator {path!r} has no best params under {os.path.join(path, 'best')}")
  module, info = runfiles.build_encoder(path)
  reversed_run = bool(info.get("reverse", False))
  if (cfg.direction == "backward") != reversed_run:
    raise ValueError(f"data.synthesis.direction={cfg.direction!r} needs a generator trained "
                     f"{'on time-reversed sequences (data.reverse=True)' if cfg.direction == 'backward' else 'forwards'}; "
                     f"{path!r} was trained {'backwards' if reversed_run else 'forwards'}: use direction="
                     f"{'backward' if reversed_run else 'forward'!r} or another generator")
  params, _ = ckpt.restore_best_params(path)
  pseudo, report = synthesis.generate(module, params, runfiles.read_item_keys(path), domain, cfg)
  report["model"] = path
  log.info("synthesis (%s): %d of %d short training users lengthened, %d items added", cfg.direction,
           report["users_lengthened"], report["short_users"], report["items_added"])
  return dataclasses.replace(domain, pseudo=pseudo), report

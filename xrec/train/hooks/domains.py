"""Several domains in one model (strategies.RUNTIME: multi_domain, shared_private): at the best
checkpoint, every domain the model serves is evaluated: the target's metrics and, on the source
stream's users (those with a validation and a test item), the source domain's."""

from __future__ import annotations

import dataclasses

from xrec.evaluate import evaluator as evaluation
from xrec.train.hooks.base import Hook


class Domains(Hook):
  name = "domains"

  def results(self, run, final) -> dict:
    out = {"target": {"valid": final.valid, "test": final.test}}
    source = run.streams["source"].domain if "source" in run.streams else None
    if source is not None and "source" in run.module.domains:
      source = dataclasses.replace(source, eval_users=source.eval_users[source.lengths[source.eval_users] >= 3])
      other = evaluation.Evaluator(run.module, run.domain.num_items, run.spec.model.max_len, run.spec.eval,
                                   run.mesh, run.param_sh, {"domain": "source"})
      out["source"] = {"valid": other(final.best_params, source, "valid"),
                       "test": other(final.best_params, source, "test"),
                       "population_users": int(len(source.eval_users))}
    return {"domains": out}

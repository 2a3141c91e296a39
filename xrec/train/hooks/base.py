"""The runtime hook protocol (xrec/train/hooks/__init__.py has the table of points)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Run:
  """What hooks see of the run being built; the loop fills fields as the recipe goes on."""

  spec: Any  # the run's typed pieces, xrec.config.RunSpec (after every hook's configure)
  workdir: str
  domain: Any  # pipeline.DomainSequences of the target (hooks may replace it in prepare_data)
  mesh: Any = None
  rules: Any = None
  overlap: dict | None = None  # the target catalogue's overlap with the pretrained model's, by raw key
  plan: Any = None  # transfer.TransferPlan, bound
  module: Any = None  # the encoder to train (with inserted modules)
  objective: Any = None
  streams: dict = dataclasses.field(default_factory=dict)  # name -> pipeline.TrainBatches
  num_steps: int = 0
  item_probs: Any = None  # sampled softmax by popularity: the item distribution it draws from
  param_sh: Any = None  # the params' shardings
  init: Any = None  # checkpoint.InitSource (after the load priority)
  report: dict | None = None  # the transfer report (what the pretrained model gave)
  evaluate: Any = None  # the validation Evaluator (hooks may restrict its candidates)
  meta: dict | None = None  # the best-checkpoint tracker's state (restored on resume)
  budget: dict | None = None  # trainable / stored params of the plan
  writer: Any = None  # the metric writer (after the loop)


@dataclasses.dataclass
class Final:
  """The finished run, for `results`: params of the best validation checkpoint, the final train
  state and the test metrics at the best checkpoint."""

  best_params: Any
  state: dict
  valid: dict
  test: dict


class Hook:
  """One runtime hook: every method is a no-op unless a subclass fills it (see the module doc)."""

  name = ""
  state_key = ""  # key of the carried state in the train state ("" = carries none)
  provides: tuple[str, ...] = ()  # objective streams this hook provides

  @classmethod
  def wanted(cls, spec, runtime: tuple[str, ...]) -> bool:
    """Whether a run with this spec (xrec.config.RunSpec; and a strategy with these runtime hooks) runs
    the hook."""
    del spec
    return cls.name in runtime

  def configure(self, run: Run) -> dict:
    """Dotted config fields to set before the model is built (run.spec.replace applies them)."""
    return {}

  def prepare_data(self, run: Run) -> None:
    pass

  def init_state(self, run: Run, state: dict):
    return None

  def frozen(self, run: Run, state: dict):
    return None

  def after_init(self, run: Run, state: dict) -> dict:
    return state

  def objective_inputs(self, state: dict) -> dict:
    return {}

  def penalty(self, params, state: dict):
    return None

  def after_update(self, params, state: dict):
    return params

  def after_step(self, run: Run, step: int, state: dict) -> dict:
    return state

  def steps_with_work(self, run: Run) -> frozenset:
    """Steps after which after_step changes something (the loop checks divergence first)."""
    return frozenset()

  def min_best_step(self, run: Run) -> int:
    return 0

  def results(self, run: Run, final: Final) -> dict:
    return {}


def merge_results(results: dict, extra: dict) -> None:
  """A hook's {section: {key: value}} into results: dict sections merge one level deep."""
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(results.get(key), dict):
      results[key].update(value)
    else:
      results[key] = value

"""AdamW with linear warmup + cosine decay and global-norm clipping.

The peak learning rate is an input of the compiled training step, not a constant inside it
(`AtRate`): every candidate of a learning-rate grid, and every run that differs from another only
in `optim.lr`, compiles to the same program, which the persistent compilation cache then serves
(on an accelerator a model's compile takes tens of seconds; each extra candidate of a grid paid it).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import optax


def warmup_steps(optim_cfg, total_steps: int) -> int:
  """Linear warmup over `optim.warmup_fraction` of the step budget (it scales with the budget)."""
  fraction = optim_cfg.warmup_fraction
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"optim.warmup_fraction={fraction!r} must be in [0, 1)")
  return min(int(round(fraction * total_steps)), max(total_steps - 1, 0))


def learning_rate_schedule(optim_cfg, total_steps: int, lr=None):
  """The schedule peaking at `lr` (default optim.lr; inside a step a traced scalar): `lr` times the
  schedule's shape at peak 1, so the peak is a factor the compiled step can take as an input."""
  warmup = warmup_steps(optim_cfg, total_steps)
  if optim_cfg.schedule == "cosine":
    shape = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=float(optim_cfg.end_lr_factor))
  elif optim_cfg.schedule == "constant":
    shape = optax.join_schedules([optax.linear_schedule(0.0, 1.0, max(warmup, 1)), optax.constant_schedule(1.0)],
                                 [warmup]) if warmup else optax.constant_schedule(1.0)
  else:
    raise ValueError(f"Unknown lr schedule {optim_cfg.schedule!r}; valid: ['constant', 'cosine']")
  peak = optim_cfg.lr if lr is None else lr
  return lambda count: peak * shape(count)


def _decay_mask(params):
  """Weight decay on matrices (kernels, embedding tables), not on biases or norms."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, total_steps: int, lr=None):
  """(tx, schedule) peaking at `lr` (default optim.lr)."""
  if optim_cfg.name != "adamw":
    raise ValueError(f"Unknown optimizer {optim_cfg.name!r}; valid: ['adamw']")
  schedule = learning_rate_schedule(optim_cfg, total_steps, lr)
  parts = []
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=1e-8,
                           weight_decay=optim_cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule


@dataclasses.dataclass(frozen=True)
class AtRate:
  """An optimizer with its peak learning rate as an input: `build(lr)` is the transformation at
  peak `lr` (inside the training step a traced scalar), `lr` the run's value. Its state does not
  depend on the rate (`tx` inits and shards it), so a checkpoint is the same as a fixed rate's."""

  build: Callable[..., optax.GradientTransformation]
  lr: float

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.build(self.lr)


def at_rate(optim_cfg, total_steps: int,
            wrap: Callable[[Callable[[], optax.GradientTransformation]], optax.GradientTransformation]
            = lambda base: base()) -> AtRate:
  """The run's optimizer as an AtRate; `wrap(base_tx_fn)` puts it in a transfer plan's optimizer
  (`plan.make_optimizer`)."""
  return AtRate(lambda lr: wrap(lambda: make_optimizer(optim_cfg, total_steps, lr)[0]), float(optim_cfg.lr))

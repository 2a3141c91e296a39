"""AdamW with linear warmup + cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax


def warmup_steps(optim_cfg, total_steps: int) -> int:
  """Linear warmup over `optim.warmup_fraction` of the step budget (it scales with the budget)."""
  fraction = optim_cfg.warmup_fraction
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"optim.warmup_fraction={fraction!r} must be in [0, 1)")
  return min(int(round(fraction * total_steps)), max(total_steps - 1, 0))


def learning_rate_schedule(optim_cfg, total_steps: int):
  warmup = warmup_steps(optim_cfg, total_steps)
  if optim_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim_cfg.lr * optim_cfg.end_lr_factor)
  if optim_cfg.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim_cfg.lr, max(warmup, 1)), optax.constant_schedule(optim_cfg.lr)],
        [warmup]) if warmup else optax.constant_schedule(optim_cfg.lr)
  raise ValueError(f"Unknown lr schedule {optim_cfg.schedule!r}; valid: ['constant', 'cosine']")


def _decay_mask(params):
  """Weight decay on matrices (kernels, embedding tables), not on biases or norms."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, total_steps: int):
  if optim_cfg.name != "adamw":
    raise ValueError(f"Unknown optimizer {optim_cfg.name!r}; valid: ['adamw']")
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=1e-8,
                           weight_decay=optim_cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule

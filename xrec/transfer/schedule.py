"""The trainable schedule: which params train, at what learning-rate multiplier, in the optimizer.

A schedule is a list of `(regex, lr_multiplier | None)` over param paths
(`block_0/attn/query/kernel`); `None` freezes. The first rule whose regex
fullmatches a path wins, and every param must be matched (the error lists the
unmatched paths) so nothing trains or freezes by accident.

Freezing happens only here, in the optimizer (one mechanism, no stop_gradient in
the model): `optax.multi_transform` sends frozen params to `optax.set_to_zero()`,
so they hold no optimizer state and stay bit-identical; all trainable params share
one copy of the base optimizer (one global-norm clip, one Adam step count) and the
multipliers scale its updates afterwards.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax

from xrec.transfer import tree

Schedule = Sequence[tuple[str, float | None]]
TRAINABLE, FROZEN = "trainable", "frozen"


def _check_rules(schedule: Schedule):
  if not schedule:
    raise ValueError("empty trainable schedule; use [('.*', 1.0)] to train everything")
  for pattern, mult in schedule:
    if mult is not None and not (isinstance(mult, (int, float)) and mult > 0):
      raise ValueError(f"schedule rule ({pattern!r}, {mult!r}): the lr multiplier must be > 0, "
                       "or None to freeze")
  return list(zip(tree.compile_rules([p for p, _ in schedule], "schedule"), [m for _, m in schedule]))


def resolve(params, schedule: Schedule) -> dict[str, float | None]:
  """{path: lr multiplier or None (frozen)} for every leaf of `params` (boxed, abstract or
  concrete). Unmatched paths are an error that lists them and the rules."""
  rules = _check_rules(schedule)
  out, unmatched = {}, []
  for path, _ in tree.names_and_leaves(nn.unbox(params)):
    hit = tree.first_match(path, rules)
    if hit is None:
      unmatched.append(path)
    else:
      out[path] = hit[1]
  if unmatched:
    raise ValueError(f"{len(unmatched)} params match no trainable-schedule rule (use None to "
                     f"freeze): {unmatched}; rules: {[p for p, _ in schedule]}")
  return out


def layerwise_decay(roles, decay: float, base_mult: float = 1.0) -> list[tuple[str, float]]:
  """Layer-wise lr decay over an encoder's roles: of its n blocks, block i trains at
  base_mult * decay**(n - 1 - i), the position table (the bottom) at base_mult * decay**n, and
  everything else (item table, output bias, final norm: the output side, since the item table is
  also the output layer) at base_mult. decay = 1.0 is a constant multiplier."""
  if not 0 < decay <= 1:
    raise ValueError(f"layer-wise lr decay must be in (0, 1], got {decay}")
  n = len(roles.blocks)
  rules = [(roles.blocks_regex([i]), base_mult * decay ** (n - 1 - i)) for i in range(n)]
  if roles.positions:
    rules.append((roles.subtree_regex(roles.positions), base_mult * decay ** n))
  return rules + [(".*", base_mult)]


def _scale_by_multipliers(schedule: Schedule) -> optax.GradientTransformation:
  """Stateless: each update leaf times its path's multiplier. Inside multi_transform frozen
  leaves arrive as optax MaskedNodes, which have no leaves, so only trainable paths are seen."""

  def update(updates, state, params=None):
    del params
    mults = resolve(updates, schedule)
    return jax.tree_util.tree_map_with_path(lambda p, u: u * mults[tree.path_name(p)], updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_transfer_optimizer(base_tx_fn: Callable[[], optax.GradientTransformation],
                            schedule: Schedule, params=None) -> optax.GradientTransformation:
  """Base optimizer on the trainable params, multipliers per path, nothing on frozen ones.

  base_tx_fn: () -> the run's optimizer (e.g. `lambda: optimizer.make_optimizer(cfg, steps)[0]`).
  params:     any tree with the model's paths (abstract from jax.eval_shape is enough); when given,
              the schedule is checked against it now (before any work), else at `tx.init`.
  Labels are computed from param names at init/update, so the same tx serves any tree with
  these paths. Derive optimizer-state shardings with `opt_state_shardings`.
  """
  rules = _check_rules(schedule)
  if params is not None:
    resolve(params, schedule)

  def labels(params_tree):
    if not isinstance(params_tree, Mapping):  # optax.tree_map_params' placeholder: no labels to give
      return {}
    mults = resolve(params_tree, schedule)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: FROZEN if mults[tree.path_name(p)] is None else TRAINABLE, params_tree)

  trainable = base_tx_fn()
  if any(m is not None and m != 1.0 for _, m in rules):
    trainable = optax.chain(trainable, _scale_by_multipliers(schedule))
  return optax.multi_transform({TRAINABLE: trainable, FROZEN: optax.set_to_zero()}, labels)


def opt_state_shardings(tx, abstract_opt_state, param_shardings, replicated):
  """Optimizer-state shardings for any tx, including `make_transfer_optimizer`'s.

  State leaves shaped like params get the param's sharding, other leaves `replicated`.
  Unlike a bare `optax.tree_map_params(tx, lambda _, s: s, ...)`, this keeps the optax
  MaskedNodes that stand for frozen params (which have no state), so the result has
  exactly the structure of `abstract_opt_state`. Same result for plain optimizers.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  return optax.tree_map_params(
      tx, lambda value, sharding: value if is_masked(value) else sharding, abstract_opt_state,
      param_shardings, transform_non_params=lambda _: replicated, is_leaf=is_masked)


def parameter_budget(params, schedule: Schedule, shared_paths: Sequence[str] = ()) -> dict:
  """Counts for a transferred model.

  trainable / frozen / total: numbers of scalars;
  stored_params / stored_bytes: what a target domain must keep besides the pretrained model:
    every trainable param plus every param not in `shared_paths` (paths whose value is the
    pretrained checkpoint's array, from load_params' report; empty for scratch).
  """
  mults = resolve(params, schedule)
  shared = set(shared_paths)
  counts = {"trainable": 0, "frozen": 0, "total": 0, "stored_params": 0, "stored_bytes": 0}
  for path, leaf in tree.names_and_leaves(nn.unbox(params)):
    size = int(np.prod(leaf.shape))
    nbytes = size * np.dtype(leaf.dtype).itemsize
    counts["total"] += size
    counts["trainable" if mults[path] is not None else "frozen"] += size
    if mults[path] is not None or path not in shared:
      counts["stored_params"] += size
      counts["stored_bytes"] += nbytes
  return counts

"""The one entry point of xrec/transfer for a training loop: `prepare(config) -> TransferPlan`.

    from xrec.transfer import apply as transfer

    plan = transfer.prepare(config)              # config.transfer + config.model.num_layers
    module = models.build(config.model, domain.num_items, max_len).clone(**plan.model_fields)
    tx = plan.make_optimizer(lambda: optimizer.make_optimizer(config.optim, num_steps)[0])
    # create the sharded state with this tx; derive the optimizer-state shardings with
    # `plan.opt_state_shardings` (frozen params have no state: optax MaskedNodes)
    if plan.strategy.load:                         # every preset but scratch
      pretrained = checkpoint.restore_best_params(config.train.init_from)[0]
      params, report = plan.init_params(jax.device_get(state["params"]), pretrained,
                                        source_item_keys, target_item_keys)
      state["params"] = jax.device_put(params, param_shardings)
    budget = plan.budget(state["params"], report)  # trainable / total / stored_bytes
    log.info(plan.describe(budget)); results["transfer"] = {**budget, "report": report}
    if not plan.train: skip the training steps (zero_shot) and only evaluate.

`source_item_keys` / `target_item_keys` are the raw item keys of the pretrained
and the target domain (id i -> keys[i - 1], `DomainSequences.item_keys`): item
tables move by key, never by position.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Sequence

import optax

from xrec.transfer import load as L
from xrec.transfer import schedule as S
from xrec.transfer import strategies as ST
from xrec.transfer import tree as T
from xrec.transfer import vocab as V

ITEM_ROWS = r"(item_embed|output_embed)/embedding|output_bias"  # tables with one row per item id
POSITIONS = r"pos_embed/embedding"


@dataclasses.dataclass(frozen=True)
class TransferPlan:
  strategy: ST.Strategy
  unseen_items: str  # rule for target items absent from the source: random | mean | zero
  source_subtree: str = ""  # part of the pretrained tree that holds the model's params
  rename: tuple[tuple[str, str], ...] = ()  # strategy rules + config.transfer.rename
  dont_load: tuple[str, ...] = ()  # strategy regexes + config.transfer.dont_load
  # the item overlap with the pretrained model (vocab.item_overlap) and what it decided:
  # train_item_tables (PEFT presets, transfer.train_item_embeddings) and not_applicable (zero_shot)
  overlap: dict | None = None
  item_tables: dict = dataclasses.field(default_factory=dict)
  not_applicable: str = ""

  @property
  def model_fields(self) -> dict:
    """SASRec fields to set on the target model (`module.clone(**plan.model_fields)`)."""
    return dict(self.strategy.model_fields)

  @property
  def train(self) -> bool:
    """False for zero_shot: evaluate the transferred params without training."""
    return self.strategy.train

  @property
  def schedule(self):
    return self.strategy.schedule

  def init_params(self, fresh_params, pretrained_params, source_item_keys: Sequence | None,
                  target_item_keys: Sequence | None) -> tuple[dict, dict]:
    """The target model's initial params and a report.

    fresh_params:      the target model's own init (host arrays), [vocab_t, embed] item table etc.
    pretrained_params: the pretrained param tree (or a tree holding it at transfer.source_subtree).
    source_item_keys, target_item_keys: raw item keys of both domains (needed whenever item
      tables are loaded). Item rows move by key (unseen rows by `unseen_items`), positions are
      resized from the end when max_len differs (see vocab.resize_positions).
    Returns (params shaped exactly like fresh_params, report) with report keys strategy,
    loaded, fresh, shared (see load.load_params), items (the overlap report) and positions.
    """
    if not self.strategy.load:
      return fresh_params, {"strategy": self.strategy.name, "loaded": [], "fresh": sorted(
          T.flatten(fresh_params)), "shared": [], "transformed": {}, "items": None, "positions": None}

    def item_rows(path, pretrained, init):
      if source_item_keys is None or target_item_keys is None:
        raise ValueError(f"{path}: item tables move by raw item key; pass source_item_keys and "
                         "target_item_keys (DomainSequences.item_keys of both domains)")
      return V.map_item_rows(pretrained, init, source_item_keys, target_item_keys, self.unseen_items)

    def positions(path, pretrained, init):
      del path
      return V.resize_positions(pretrained, init), {"source_max_len": int(pretrained.shape[0]),
                                                    "target_max_len": int(init.shape[0])}

    params, report = L.load_params(
        fresh_params, pretrained_params, subtree=self.source_subtree, rename=self.rename,
        graft=self.strategy.graft, dont_load=self.dont_load,
        transforms=((ITEM_ROWS, item_rows), (POSITIONS, positions)))
    info = report["transformed"]
    items = next((info[p] for p in ("item_embed/embedding", "output_embed/embedding", "output_bias")
                  if p in info), None)
    report.update(strategy=self.strategy.name, items=items, positions=info.get("pos_embed/embedding"))
    return params, report

  def make_optimizer(self, base_tx_fn: Callable[[], optax.GradientTransformation],
                     params=None) -> optax.GradientTransformation:
    """`base_tx_fn()` on the trainable params with the strategy's multipliers; frozen params
    get no state and no update. `params` (abstract is enough) checks the schedule up front."""
    return S.make_transfer_optimizer(base_tx_fn, self.strategy.schedule, params)

  @staticmethod
  def opt_state_shardings(tx, abstract_opt_state, param_shardings, replicated):
    """Drop-in for loop.optax_state_shardings that also handles frozen (masked) params."""
    return S.opt_state_shardings(tx, abstract_opt_state, param_shardings, replicated)

  def budget(self, params, report: dict | None = None) -> dict:
    """Trainable / frozen / total scalars and what a target domain must store (trainable params
    plus params not shared with the pretrained model, from `report['shared']`)."""
    shared = report["shared"] if report else ()
    return S.parameter_budget(params, self.strategy.schedule, shared)

  def describe(self, budget: dict) -> str:
    return (f"transfer {self.strategy.name}: {budget['trainable']:,} of {budget['total']:,} params "
            f"train ({100 * budget['trainable'] / max(budget['total'], 1):.2f}%); per target domain "
            f"store {budget['stored_params']:,} params = {budget['stored_bytes']:,} bytes")


def prepare(config, overlap: dict | None = None) -> TransferPlan:
  """The plan for `config.transfer.strategy` with its options (config.transfer) for the model in
  config.model. Fails before any work on an unknown strategy, option value or unseen rule.

  overlap: vocab.item_overlap(pretrained keys, target keys, target frequencies) when a pretrained
  model is loaded. Below transfer.min_item_overlap (share of target interactions): zero_shot is
  not applicable (it would rank unseen items arbitrarily) and, with train_item_embeddings="auto",
  the parameter-efficient presets train the item tables.
  """
  options = copy.deepcopy(config.transfer)
  rule = options.train_item_embeddings
  if rule not in ST.ITEM_TABLE_RULES:
    raise ValueError(f"Unknown transfer.train_item_embeddings {rule!r}; valid: {list(ST.ITEM_TABLE_RULES)}")
  threshold = options.min_item_overlap
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"transfer.min_item_overlap={threshold!r} must be in [0, 1]")
  share = None if overlap is None else overlap.get("interaction_share", overlap.get("item_share"))
  disjoint = share is not None and share < threshold
  if rule == "auto":
    train_tables = disjoint
    reason = (f"auto: the source knows {share:.1%} of the target's interactions (< min_item_overlap "
              f"{threshold:g})" if disjoint else "auto: catalogues overlap" if share is not None
              else "auto: no pretrained item table")
  else:
    train_tables = rule == "always"
    reason = f"train_item_embeddings={rule!r}"
  with options.unlocked():
    options.train_item_embeddings = "always" if train_tables else "never"
  if options.unseen_items not in V.UNSEEN_RULES:
    raise ValueError(f"Unknown transfer.unseen_items {options.unseen_items!r}; "
                     f"valid: {list(V.UNSEEN_RULES)}")
  for field in ("lr_mult", "new_lr_mult"):
    if not options[field] > 0:
      raise ValueError(f"transfer.{field}={options[field]!r} must be > 0 (freeze with a strategy)")
  strategy = ST.get_strategy(options.strategy, options, int(config.model.num_layers))
  rename = tuple(strategy.rename) + tuple(tuple(r) for r in options.rename)
  dont_load = tuple(strategy.dont_load) + tuple(options.dont_load)
  T.compile_rules([p for p, _ in rename], "transfer.rename")
  T.compile_rules(dont_load, "transfer.dont_load")
  not_applicable = ""
  if not strategy.train and disjoint:
    not_applicable = (f"n/a (item overlap {share:.0%}): the source knows {share:.1%} of the target's "
                      f"interactions, below transfer.min_item_overlap={threshold:g}")
  return TransferPlan(strategy=strategy, unseen_items=options.unseen_items,
                      source_subtree=options.source_subtree, rename=rename, dont_load=dont_load,
                      overlap=overlap, item_tables={"train": train_tables, "reason": reason},
                      not_applicable=not_applicable)

"""The one entry point of xrec/transfer for a trainer: `prepare(transfer_cfg, overlap) -> TransferPlan`.

    from xrec.transfer import apply as transfer

    plan = transfer.prepare(config.transfer, overlap)  # names and options checked; item-table rule resolved
    encoder = models.build(config.model with plan.model_fields, num_items)   # e.g. untied for linear_probe
    module, plan = plan.bind(encoder)             # the preset on the encoder's roles; modules inserted
    tx = optimizer.runtime(config.optim, num_steps, plan.make_optimizer)  # tx.tx: at the config's values
    # create the sharded state with tx.tx (frozen params have no state: optax MaskedNodes)
    if plan.strategy.load:                         # every preset but scratch
      params, report = plan.init_params(fresh_params, pretrained_params, source_item_keys,
                                        target_item_keys, source)   # source: the pretrained Encoder info
    budget = plan.budget(params, report)           # trainable / total / stored_bytes
    if not plan.train: skip the training steps (zero_shot) and only evaluate.

`source_item_keys` / `target_item_keys` are the raw item keys of the pretrained and the target
domain (id i -> keys[i - 1]): item tables move by key, never by position. Everything is addressed
through the encoders' roles (xrec/models/base.py), never one model's paths.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Callable, Sequence

import optax

from xrec.models.base import Roles
from xrec.transfer import insert
from xrec.transfer import load as loading
from xrec.transfer import schedule as schedules
from xrec.transfer import strategies
from xrec.transfer import tree
from xrec.transfer import vocab


@dataclasses.dataclass(frozen=True)
class SourceEncoder:
  """What a trainer knows of the pretrained model: its encoder class name and roles."""

  name: str
  roles: Roles
  uses_mask_token: bool = False


@dataclasses.dataclass(frozen=True)
class TransferPlan:
  name: str  # the preset (transfer.strategy)
  options: object  # config.transfer with train_item_embeddings resolved to "always" | "never"
  unseen_items: str  # rule for target items absent from the source: random | mean | zero
  source_subtree: str = ""  # part of the pretrained tree that holds the model's params
  extra_rename: tuple[tuple[str, str], ...] = ()  # config.transfer.rename
  extra_dont_load: tuple[str, ...] = ()  # config.transfer.dont_load
  # the item overlap with the pretrained model (vocab.item_overlap) and what it decided:
  # item_tables (PEFT presets, transfer.train_item_embeddings) and not_applicable (zero_shot)
  overlap: dict | None = None
  item_tables: dict = dataclasses.field(default_factory=dict)
  # set by bind(): the preset on the target encoder
  strategy: strategies.Strategy | None = None
  roles: Roles | None = None
  encoder: str = ""
  uses_mask_token: bool = False

  @property
  def runtime(self) -> tuple[str, ...]:
    """The runtime hooks the preset trains with (strategies.RUNTIME; xrec/train/hooks)."""
    return tuple(strategies.RUNTIME.get(self.name, ()))

  @property
  def model_fields(self) -> dict:
    """Fields of config.model the preset sets before the encoder is built."""
    return dict(strategies.MODEL_FIELDS.get(self.name, {}))

  def bind(self, encoder):
    """(module to train, bound plan): the preset built on `encoder`'s roles, its modules inserted.
    Fails, naming the presets that apply, when the encoder lacks what the preset needs."""
    roles = encoder.roles()
    strategy = strategies.get_strategy(self.name, self.options, roles, bool(encoder.causal))
    if strategy.insert is not None and getattr(encoder, "remat", False):
      raise ValueError(f"transfer.strategy={self.name!r} inserts modules into the encoder's sublayers, "
                       "which model.remat (rematerialised blocks) does not allow; set model.remat=False")
    plan = dataclasses.replace(self, strategy=strategy, roles=roles, encoder=type(encoder).__name__,
                               uses_mask_token=bool(encoder.uses_mask_token))
    return insert.wrap(encoder, strategy.insert), plan

  def _bound(self) -> strategies.Strategy:
    if self.strategy is None:
      raise RuntimeError("TransferPlan.bind(encoder) first: the preset needs the encoder's roles")
    return self.strategy

  @property
  def train(self) -> bool:
    """False for zero_shot: evaluate the transferred params without training."""
    return self._bound().train

  @property
  def schedule(self):
    """The preset's trainable schedule; the items' text embeddings (Roles.item_text) are data of
    the current catalogue, frozen under every preset."""
    schedule = self._bound().schedule
    if self.roles is not None and self.roles.item_text:
      return [(Roles.subtree_regex(self.roles.item_text), None)] + list(schedule)
    return schedule

  @property
  def not_applicable(self) -> str:
    """Why this result is not reported (zero_shot on a catalogue the source barely knows), or ""."""
    share = _share(self.overlap)
    threshold = self.options.min_item_overlap
    if self.roles is not None and self.roles.item_text and not self.roles.item_table:
      return ""  # items by their text alone: a catalogue the source never saw is still scored
    if self._bound().train or share is None or share >= threshold:
      return ""
    return (f"n/a (item overlap {share:.0%}): the source knows {share:.1%} of the target's "
            f"interactions, below transfer.min_item_overlap={threshold:g}")

  def init_params(self, fresh_params, pretrained_params, source_item_keys: Sequence | None,
                  target_item_keys: Sequence | None, source: SourceEncoder | None = None) -> tuple[dict, dict]:
    """The target model's initial params and a report.

    fresh_params:      the target model's own init (host arrays), [vocab_t, embed] item table etc.
    pretrained_params: the pretrained param tree (or a tree holding it at transfer.source_subtree).
    source_item_keys, target_item_keys: raw item keys of both domains (needed whenever item
      tables are loaded). Item rows move by key (unseen rows by `unseen_items`), positions are
      resized from the end (or the start, Roles.positions_from) when max_len differs (see
      vocab.resize_positions).
    source: the pretrained encoder's class name and roles (None: the same encoder as the target).
      Presets that load every param by path need the same encoder; `embedding_transfer` loads
      only item roles and maps them across encoders.
    Returns (params shaped exactly like fresh_params, report) with report keys strategy,
    loaded, fresh, shared (see load.load_params), items (the overlap report) and positions.
    """
    strategy = self._bound()
    if not strategy.load:
      return fresh_params, {"strategy": strategy.name, "loaded": [], "fresh": sorted(
          tree.flatten(fresh_params)), "shared": [], "transformed": {}, "items": None, "positions": None}
    roles = self.roles
    source_roles = source.roles if source else roles
    pretrained = tree.tree_get(pretrained_params, self.source_subtree)
    rename = tuple(strategy.rename) + self.extra_rename
    dont_load = tuple(strategy.dont_load) + self.extra_dont_load
    if roles.item_text:  # the current catalogue's text data, set by the trainer: a frozen table in the
      # checkpoint and a tuned tower's cached states here (or the reverse) are both that data
      dont_load += tuple(Roles.subtree_regex(p) for p in (roles.item_text, *roles.item_text_data))
    if roles.item_tower and not any(p.startswith(roles.item_tower + "/") for p in tree.flatten(pretrained)):
      dont_load += (Roles.subtree_regex(roles.item_tower),)  # the text was frozen there: the tower starts as the sentence encoder
    if strategy.load_roles is not None:
      pretrained, dont_load = self._by_role(pretrained, fresh_params, source_roles, strategy.load_roles,
                                            source)
      rename = ()
    elif source is not None and source.name != self.encoder:
      raise ValueError(
          f"the pretrained model is a {source.name}, the target a {self.encoder}: transfer.strategy="
          f"{strategy.name!r} loads every param by path, which fits only the same encoder. Across "
          "encoders only roles map: transfer.strategy='embedding_transfer' loads the item table and "
          "output bias (by item key) and trains the rest from scratch")

    def item_rows(path, pretrained_rows, init):
      if source_item_keys is None or target_item_keys is None:
        raise ValueError(f"{path}: item tables move by raw item key; pass source_item_keys and "
                         "target_item_keys (DomainSequences.item_keys of both domains)")
      mask = self.uses_mask_token and (source.uses_mask_token if source else True)
      return vocab.map_item_rows(pretrained_rows, init, source_item_keys, target_item_keys, self.unseen_items, mask)

    def positions(path, pretrained_rows, init):
      if source_roles.positions_from != roles.positions_from:
        raise ValueError(
            f"{path}: the pretrained model's position rows count from the {source_roles.positions_from} "
            f"of the window, the target's from the {roles.positions_from} (model.<name>.positions: "
            "'right' counts from the end, 'left' from the start), so each row would mean another slot; "
            "set the pretraining's model.<name>.positions, or keep the target's positions fresh with "
            "transfer.dont_load=('pos_embed/embedding',)")
      return (vocab.resize_positions(pretrained_rows, init, roles.positions_from),
              {"source_max_len": int(pretrained_rows.shape[0]), "target_max_len": int(init.shape[0])})

    transforms = [(roles.item_rows_regex, item_rows)]
    if roles.positions:
      transforms.append((re.escape(roles.positions), positions))
    params, report = loading.load_params(
        fresh_params, pretrained, rename=rename, graft=strategy.graft, dont_load=dont_load,
        transforms=transforms)
    info = report["transformed"]
    items = next((info[p] for p in roles.item_rows if p in info), None)
    report.update(strategy=strategy.name, items=items,
                  positions=info.get(roles.positions) if roles.positions else None)
    return params, report

  def _by_role(self, pretrained, fresh_params, source_roles: Roles, load_roles, source):
    """The pretrained params of `load_roles`, moved to the target's paths for those roles, and a
    dont_load rule for every other target param."""
    flat = tree.flatten(pretrained)
    picked, mapped = {}, []
    for role in load_roles:
      src, dst = getattr(source_roles, role), getattr(self.roles, role)
      if src and dst and src in flat:
        picked[dst] = flat[src]
        mapped.append(dst)
    if not mapped:
      name = source.name if source else "the pretrained model"
      raise ValueError(f"no role of {list(load_roles)} maps from {name} to {self.encoder}: the checkpoint "
                       f"has {[r for r in load_roles if getattr(source_roles, r)]}, the model "
                       f"{[r for r in load_roles if getattr(self.roles, r)]}")
    others = "(?!(" + "|".join(re.escape(p) for p in mapped) + ")$).*"
    return tree.unflatten(picked), (others,) + self.extra_dont_load

  def make_optimizer(self, base_tx_fn: Callable[[], optax.GradientTransformation],
                     params=None) -> optax.GradientTransformation:
    """`base_tx_fn()` on the trainable params with the strategy's multipliers; frozen params
    get no state and no update. `params` (abstract is enough) checks the schedule up front."""
    return schedules.make_transfer_optimizer(base_tx_fn, self.schedule, params)

  def budget(self, params, report: dict | None = None) -> dict:
    """Trainable / frozen / total scalars and what a target domain must store (trainable params
    plus params not shared with the pretrained model, from `report['shared']`)."""
    shared = report["shared"] if report else ()
    return schedules.parameter_budget(params, self.schedule, shared)

  def budget_summary(self, budget: dict) -> str:
    return (f"transfer {self.name}: {budget['trainable']:,} of {budget['total']:,} params "
            f"train ({100 * budget['trainable'] / max(budget['total'], 1):.2f}%); per target domain "
            f"store {budget['stored_params']:,} params = {budget['stored_bytes']:,} bytes")


def _share(overlap: dict | None):
  return None if overlap is None else overlap.get("interaction_share", overlap.get("item_share"))


def prepare(transfer_cfg, overlap: dict | None = None) -> TransferPlan:
  """The plan for `transfer_cfg.strategy` with its options (the config's transfer piece). Fails before any
  work on an unknown strategy, option value or rule; `bind(encoder)` then builds the preset.

  overlap: vocab.item_overlap(pretrained keys, target keys, target frequencies) when a pretrained
  model is loaded. Below transfer.min_item_overlap (share of target interactions): zero_shot is
  not applicable (it would rank unseen items arbitrarily) and, with train_item_embeddings="auto",
  the parameter-efficient presets train the item tables.
  """
  options = copy.deepcopy(transfer_cfg)
  if options.strategy not in strategies.STRATEGIES:
    raise ValueError(f"Unknown transfer strategy {options.strategy!r}; valid: {sorted(strategies.STRATEGIES)}")
  rule = options.train_item_embeddings
  if rule not in strategies.ITEM_TABLE_RULES:
    raise ValueError(f"Unknown transfer.train_item_embeddings {rule!r}; valid: {list(strategies.ITEM_TABLE_RULES)}")
  threshold = options.min_item_overlap
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"transfer.min_item_overlap={threshold!r} must be in [0, 1]")
  share = _share(overlap)
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
  if options.unseen_items not in vocab.UNSEEN_RULES:
    raise ValueError(f"Unknown transfer.unseen_items {options.unseen_items!r}; valid: {list(vocab.UNSEEN_RULES)}")
  for field in ("lr_mult", "new_lr_mult"):
    if not options[field] > 0:
      raise ValueError(f"transfer.{field}={options[field]!r} must be > 0 (freeze with a strategy)")
  rename = tuple(tuple(r) for r in options.rename)
  dont_load = tuple(options.dont_load)
  tree.compile_rules([p for p, _ in rename], "transfer.rename")
  tree.compile_rules(dont_load, "transfer.dont_load")
  return TransferPlan(name=options.strategy, options=options, unseen_items=options.unseen_items,
                      source_subtree=options.source_subtree, extra_rename=rename, extra_dont_load=dont_load,
                      overlap=overlap, item_tables={"train": train_tables, "reason": reason})

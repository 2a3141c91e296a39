"""Named transfer strategies: small functions from options and the encoder's roles to surgery.

Each preset takes the `config.transfer` options and the target encoder's roles
(xrec/models/base.py: item table, output bias, positions, ordered blocks, ...) and returns a
`Strategy`: what to load (rename / graft / dont_load, or only some roles), the trainable
schedule `(regex, lr_mult | None)` (first match wins, None = frozen) and the modules to insert
(xrec/transfer/insert/). Presets never name one model's paths, so every preset works on every
encoder whose roles it needs; the registry is explicit and an unknown name fails with the list.

Multipliers: `lr_mult` scales the lr of pretrained params that train, `new_lr_mult` that of
freshly initialised ones (inserted modules, new blocks); `scratch` always trains at 1.0. The
item-table row mapping by key and the position resize are applied by xrec/transfer/apply.py for
every loading preset.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import ml_collections

from xrec.config import core_config
from xrec.models.base import Roles
from xrec.transfer import insert
from xrec.transfer import prune as pruning
from xrec.transfer import schedule as schedules

INSERTED = r"inserted/.*"  # every inserted module's params (xrec/transfer/insert/)
ITEM_TABLE_RULES = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class Strategy:
  """What a preset asks for. Paths are `a/b/c` names; regexes are fullmatched."""

  name: str
  schedule: tuple[tuple[str, float | None], ...]  # trainable schedule, covers every param
  load: bool = True  # False: nothing from the pretrained model (scratch)
  train: bool = True  # False: evaluate the loaded model as is (zero_shot)
  rename: tuple[tuple[str, str], ...] = ()  # (checkpoint path regex, model path replacement)
  graft: tuple[tuple[str, str], ...] = ()  # (model subtree, checkpoint subtree) copies
  dont_load: tuple[str, ...] = ()  # regexes that keep the fresh init
  # None: load every param by path (same encoder); a tuple of role names: load only those
  # roles, mapped by role, so the checkpoint may be another encoder (embedding_transfer)
  load_roles: tuple[str, ...] | None = None
  insert: insert.InsertSpec | None = None  # modules inserted into the encoder (or heads beside it)
  terms: tuple[tuple[str, float], ...] = ()  # objective terms the preset adds (xrec/train/objectives.py)
  teacher: str = ""  # a finished run whose frozen model the distillation terms read
  prune: tuple = ()  # (kind, ratio, events, start, end): pruning during training (xrec/transfer/prune.py)


# Options of the presets: config.transfer.<group>.<field> (defaults here; xrec/config.py reads them).
OPTIONS = {
    "shared_layers": {"bottom_blocks": 1},  # partial_freeze / reuse_bottom: bottom blocks kept (frozen)
    "adapter": {"dim": 16, "kind": "serial"},  # serial reads the sublayer output, parallel its input
    "lora": {"rank": 4, "targets": ("query", "value")},  # subset of query, key, value, out, wi, wo
    "prompt": {"num_prompts": 4},  # learned prefix tokens per attention module
    "patch": {"dim": 16},  # PeterRec-style patch bottleneck size
    # dann: discriminator hidden size; weights of the source next-item term and the adversarial term
    # (also the shared_private preset's; its orthogonality_weight on the shared/private difference term)
    "dann": {"hidden": 64, "source_weight": 1.0, "adversarial_weight": 0.1, "orthogonality_weight": 0.1},
    # distill: the teacher run's workdir ("" = train.init_from); weights of the logit and the
    # ranking distillation terms (0 = off); temperature / top_k in objective.distill_*
    # (teacher_embed_dim is set by the trainer from the teacher's model: the projection's width)
    "distill": {"teacher": "", "logit_weight": 1.0, "ranking_weight": 0.0, "hidden_weight": 0.0,
                "teacher_embed_dim": 0},
    # prune: magnitude | heads | mlp | items | dims; the final ratio (of the blocks' weights, of the
    # heads / MLP channels of every block, of the items, or of the item tables' dims), reached over `events` pruning steps spread over [start, end]
    # of the budget with fine-tuning in between
    "prune": {"kind": "magnitude", "ratio": 0.5, "events": 3, "start": 0.0, "end": 0.5},
    # multi_domain: shared_bottom (per-domain heads) | star (+ per-domain weights and norms);
    # the weight of the source domain's next-item term
    "multi_domain": {"kind": "shared_bottom", "source_weight": 1.0},
    # cross_user: merged (C2DSR-style merged sequences) | prefix (a source-history token); rows and
    # source_dim are set by the trainer (the source model's vocab or the target's users + 1, and
    # the source encoder's width)
    "cross_user": {"mode": "merged", "rows": 0, "source_dim": 0},
    # l2sp: weight of the pull toward the pretrained weights (alpha) and of plain L2 on fresh params (beta)
    "l2sp": {"alpha": 0.1, "beta": 0.01},
}



def default_transfer_config() -> ml_collections.ConfigDict:
  """config.transfer at its defaults: the core fields and every preset's OPTIONS group."""
  c = core_config().transfer
  with c.unlocked():
    for group, fields in OPTIONS.items():
      c[group] = ml_collections.ConfigDict(dict(fields))
  return c


# Model fields a preset sets on the target encoder (model.<field>), known before the encoder is
# built (its roles depend on them).
MODEL_FIELDS = {"linear_probe": {"tie_embeddings": False}}


def _positive_int(options, field: str, where: str) -> int:
  value = options[field]
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"transfer.{where}.{field} must be a positive integer, got {value!r}")
  return value


def _bottom_blocks(options, roles: Roles) -> int:
  k = options.shared_layers.bottom_blocks
  n = len(roles.blocks)
  if not isinstance(k, int) or not 0 <= k <= n:
    raise ValueError(f"transfer.shared_layers.bottom_blocks={k!r} must be an integer in [0, {n}] "
                     f"(the encoder has {n} blocks)")
  return k


def _sub(path: str | None) -> list[str]:
  return [Roles.subtree_regex(path)] if path else []


def _item_tables(roles: Roles) -> str:
  """The item side the presets train or freeze together: ID tables and, for text items, the adaptor
  and a tuned text tower's trainable part."""
  tables = ([re.escape(p) for p in (roles.item_table, roles.output_table) if p] + _sub(roles.item_adaptor)
            + _sub(roles.item_tower))
  return "|".join(tables) or "(?!)"


def _bottom_frozen(k: int, roles: Roles) -> list[tuple[str, None]]:
  """The position table and the bottom k blocks frozen (nothing when k == 0)."""
  if not k:
    return []
  return [(r, None) for r in _sub(roles.positions)] + [(roles.blocks_regex(range(k)), None)]


def _bias(roles, lr_mult) -> tuple:
  """The output bias's schedule rule, or none for a model without one (model.output_bias=False)."""
  return ((re.escape(roles.output_bias), lr_mult),) if roles.output_bias else ()


def _item_mult(options):
  """Item tables of the parameter-efficient presets: frozen unless train_item_embeddings is
  "always" (apply.prepare resolves "auto" from the item overlap before the presets run)."""
  return options.lr_mult if options.train_item_embeddings == "always" else None


def scratch(options, roles):
  """No transfer: random init, everything trains at the base learning rate."""
  del options, roles
  return Strategy("scratch", load=False, schedule=((".*", 1.0),))


def zero_shot(options, roles):
  """The pretrained model on the target as is (items mapped by key), no target training."""
  del options, roles
  return Strategy("zero_shot", train=False, schedule=((".*", None),))


def full_finetune(options, roles):
  """Parameter transfer: load everything, train everything (lr_mult, optional layer-wise decay
  over the encoder's blocks)."""
  return Strategy("full_finetune", schedule=tuple(
      schedules.layerwise_decay(roles, options.layerwise_decay, options.lr_mult)))


def linear_probe(options, roles):
  """Feature transfer: frozen encoder and input item table; a separate output head (untied
  output table, initialised from the pretrained item table, and output bias) trains."""
  if not roles.output_table or not roles.item_table:
    raise ValueError("linear_probe needs an encoder with an item table and a separate output table "
                     "(model.tie_embeddings=False, set by the preset)")
  return Strategy("linear_probe", graft=((roles.output_table.rsplit("/", 1)[0], roles.item_table.rsplit("/", 1)[0]),),
                  schedule=((re.escape(roles.output_table), options.lr_mult),
                            *_bias(roles, options.lr_mult), (".*", None)))


def frozen_encoder(options, roles):
  """Feature transfer: the encoder (blocks, positions, norms) frozen; item tables and output bias
  train."""
  return Strategy("frozen_encoder", schedule=((_item_tables(roles), options.lr_mult),
                                              *_bias(roles, options.lr_mult), (".*", None)))


def adaptor_only(options, roles):
  """Text items (model.item_repr text / text+id): everything loaded, the encoder and output bias
  frozen; the adaptor from the text embeddings to the model's width trains, and with text + ID the
  ID table too (UniSRec's inductive / transductive fine-tuning: a new catalogue's ID rows have
  nothing pretrained in them), and a tuned text tower (model.text.tune) with the adaptor."""
  ids = [(re.escape(roles.item_table), options.lr_mult)] if roles.item_table else []
  tower = [(Roles.subtree_regex(roles.item_tower), options.lr_mult)] if roles.item_tower else []
  return Strategy("adaptor_only", schedule=tuple([(Roles.subtree_regex(roles.item_adaptor), options.lr_mult)]
                                                 + tower + ids + [(".*", None)]))


def embedding_transfer(options, roles):
  """Feature transfer across encoders: only the pretrained item table (and output bias) is
  loaded, by role and item key, so a SASRec's items can initialise a GRU4Rec or NextItNet; the
  rest of the target encoder starts fresh (new_lr_mult) and everything trains."""
  return Strategy("embedding_transfer", load_roles=("item_table", "output_table", "output_bias"),
                  schedule=((_item_tables(roles), options.lr_mult), *_bias(roles, options.lr_mult),
                            (".*", options.new_lr_mult)))


def partial_freeze(options, roles):
  """Shared layers: positions and the bottom `shared_layers.bottom_blocks` blocks frozen, the rest
  trains."""
  k = _bottom_blocks(options, roles)
  return Strategy("partial_freeze", schedule=tuple(_bottom_frozen(k, roles) + [(".*", options.lr_mult)]))


def reuse_bottom(options, roles):
  """Shared layers: the bottom `shared_layers.bottom_blocks` pretrained blocks (and positions)
  kept frozen, blocks above freshly initialised at new_lr_mult; item tables, output bias and the
  final norm are loaded and train at lr_mult. The checkpoint may have more or fewer blocks above."""
  k = _bottom_blocks(options, roles)
  new_blocks = roles.blocks_regex(range(k, len(roles.blocks)))
  if new_blocks is None:
    return Strategy("reuse_bottom", schedule=tuple(_bottom_frozen(k, roles) + [(".*", options.lr_mult)]))
  # checkpoint blocks beyond the model's are dropped too (a deeper pretrained model)
  return Strategy("reuse_bottom", dont_load=(new_blocks, _extra_blocks(roles)),
                  schedule=tuple(_bottom_frozen(k, roles) + [(new_blocks, options.new_lr_mult),
                                                             (".*", options.lr_mult)]))


def _extra_blocks(roles: Roles) -> str:
  """Regex of blocks a deeper checkpoint has beyond the model's (same naming, higher index)."""
  if not roles.blocks:
    return "(?!)"
  stem = re.sub(r"\d+$", "", roles.blocks[-1])
  n = len(roles.blocks)
  return re.escape(stem) + r"(?!(?:" + "|".join(str(i) for i in range(n)) + r")/)\d+/.*"


def _peft(name: str, kind: str, options, roles, kind_options: dict) -> Strategy:
  """Pretrained encoder frozen; inserted modules (fresh, zero-initialised) train at new_lr_mult,
  the output bias (per-item popularity of the target) at lr_mult, item tables only with
  transfer.train_item_embeddings (by default when the catalogues barely overlap)."""
  spec = insert.InsertSpec(kind, tuple(sorted(kind_options.items())))
  where = insert.points(roles, kind, kind_options)
  if not where:
    raise ValueError(f"transfer.strategy={name!r} does not apply to this encoder (no points for {kind} "
                     f"modules in its roles); strategies that apply: {applicable(roles)}")
  return Strategy(name, dont_load=(INSERTED,), insert=spec,
                  schedule=((INSERTED, options.new_lr_mult), *_bias(roles, options.lr_mult),
                            (_item_tables(roles), _item_mult(options)), (".*", None)))


def adapter(options, roles):
  """Bottleneck adapters after every sublayer the encoder names (serial or parallel)."""
  o = options.adapter
  if o.kind not in insert.ADAPTER_KINDS:
    raise ValueError(f"Unknown transfer.adapter.kind {o.kind!r}; valid: {list(insert.ADAPTER_KINDS)}")
  return _peft("adapter", "adapter", options, roles, {"dim": _positive_int(o, "dim", "adapter"), "kind": o.kind})


def lora(options, roles):
  """Rank-`lora.rank` updates on the projections named in lora.targets."""
  targets = tuple(options.lora.targets)
  unknown = [t for t in targets if t not in insert.LORA_TARGETS]
  if unknown or not targets:
    raise ValueError(f"transfer.lora.targets={targets!r}: unknown or empty {unknown}; "
                     f"valid: {list(insert.LORA_TARGETS)}")
  return _peft("lora", "lora", options, roles, {"rank": _positive_int(options.lora, "rank", "lora"),
                                                "targets": targets})


def prompt(options, roles):
  """`prompt.num_prompts` learned prefix tokens per attention module, mixed in through
  zero-initialised gates."""
  return _peft("prompt", "prompt", options, roles,
               {"num_prompts": _positive_int(options.prompt, "num_prompts", "prompt")})


def patch(options, roles):
  """PeterRec-style model patches: a bottleneck beside every block."""
  return _peft("patch", "patch", options, roles, {"dim": _positive_int(options.patch, "dim", "patch")})


def dann(options, roles):
  """Domain-adversarial transfer (Ganin et al., 2016): the pretrained encoder fine-tunes on the
  target's next items and on the source's (stream "source", weight dann.source_weight), while a
  domain discriminator on the sequence representations learns, through a gradient-reversal
  layer, to tell the domains apart; the encoder learns to confuse it (term domain_adversarial,
  weight dann.adversarial_weight, lambda on the Ganin schedule). Everything loaded trains at
  lr_mult, the fresh discriminator at new_lr_mult."""
  return _adversarial("dann", options, roles)


def shared_private(options, roles):
  """DANN's shared-private variant (domain separation networks, Bousmalis et al., 2016): as dann,
  but the loaded encoder is the shared one the discriminator reads; each domain adds a fresh
  private encoder of the same architecture (new_lr_mult) joined through a zero-init projection,
  and the term orthogonality (weight dann.orthogonality_weight) keeps the private states
  orthogonal to the shared ones. Options: transfer.dann.*."""
  return _adversarial("shared_private", options, roles)


def _adversarial(name: str, options, roles) -> Strategy:
  del roles
  o = options.dann
  weights = ("source_weight", "adversarial_weight") + (("orthogonality_weight",) if name == "shared_private" else ())
  for field in weights:
    if not o[field] > 0:
      raise ValueError(f"transfer.dann.{field}={o[field]!r} must be > 0")
  hidden = _positive_int(o, "hidden", "dann")
  terms = (("source_full_softmax", float(o.source_weight)), ("domain_adversarial", float(o.adversarial_weight)))
  if name == "dann":
    return Strategy("dann", dont_load=(r"heads/.*",),
                    insert=insert.InsertSpec("heads", (("discriminator_hidden", hidden),)),
                    schedule=((r"heads/.*", options.new_lr_mult), (".*", options.lr_mult)), terms=terms)
  fresh = r"(heads|private)/.*"
  return Strategy("shared_private", dont_load=(fresh,),
                  insert=insert.InsertSpec("shared_private", (("discriminator_hidden", hidden),
                                                              ("domains", ("target", "source")))),
                  schedule=((fresh, options.new_lr_mult), (".*", options.lr_mult)),
                  terms=terms + (("orthogonality", float(o.orthogonality_weight)),))


def distill(options, roles):
  """Distillation: a frozen teacher (any finished run: transfer.distill.teacher, else
  train.init_from; any encoder, any size; items matched by raw key, distillation over those it
  knows, at least transfer.min_item_overlap of the target's interactions) trains this student, which
  starts fresh, on the target: the objective's next-item terms plus logit distillation
  (distill.logit_weight) and ranking distillation on the teacher's top-K (distill.ranking_weight)."""
  del roles
  o = options.distill
  weights = {"distill_logits": o.logit_weight, "distill_ranking": o.ranking_weight, "distill_hidden": o.hidden_weight}
  terms = tuple((name, float(w)) for name, w in weights.items() if w > 0)
  if not terms or min(weights.values()) < 0:
    raise ValueError(f"transfer.distill needs logit_weight, ranking_weight or hidden_weight > 0 (and none "
                     f"negative); got {weights}")
  heads = None
  if o.hidden_weight > 0:  # hidden-state matching through a learned projection into the teacher's width
    if not o.teacher_embed_dim:
      raise ValueError("transfer.distill.hidden_weight > 0 needs the teacher's width (the trainer sets "
                       "transfer.distill.teacher_embed_dim from the teacher run)")
    heads = insert.InsertSpec("heads", (("projection_dim", int(o.teacher_embed_dim)),))
  return Strategy("distill", load=False, schedule=((".*", 1.0),), terms=terms, insert=heads,
                  teacher=o.teacher or "init_from")


def prune(options, roles):  # noqa: F811 (the preset; the module is `pruning`)
  """Pruning for serving cost: the pretrained model is loaded and fine-tuned on the target while
  entries are pruned on a schedule (prune.kind: global magnitude, whole attention heads / MLP
  channels of every block, the item rows of the coldest items, or the item tables' weakest
  embedding dims); pruned entries stay exactly zero. Structured pruning also yields a
  smaller dense model (results: pruning.dense)."""
  o = options.prune
  pruning.Pruner(o.kind, roles)  # the kind fits the encoder
  pruning.schedule(float(o.ratio), int(o.events), 100, float(o.start), float(o.end))  # valid options
  return Strategy("prune", schedule=((".*", options.lr_mult),),
                  prune=(o.kind, float(o.ratio), int(o.events), float(o.start), float(o.end)))


def multi_domain(options, roles):
  """Multi-domain joint training: one model for the target and the source (stream "source"): the
  loaded encoder is shared, each domain adds its own head (a zero-init residual transform and an
  output-bias offset) and, with multi_domain.kind="star", STAR's per-domain weights on every dense
  projection and per-domain norms (Transformer encoders). Trains on both domains' next items
  (source weight multi_domain.source_weight) and reports each domain's metrics."""
  del roles
  o = options.multi_domain
  if o.kind not in insert.MULTI_DOMAIN_KINDS:
    raise ValueError(f"Unknown transfer.multi_domain.kind {o.kind!r}; valid: {list(insert.MULTI_DOMAIN_KINDS)}")
  if not o.source_weight > 0:
    raise ValueError(f"transfer.multi_domain.source_weight={o.source_weight!r} must be > 0")
  return Strategy("multi_domain", dont_load=(r"domains/.*",),
                  insert=insert.InsertSpec("multi_domain", (("domains", ("target", "source")), ("kind", o.kind))),
                  schedule=((r"domains/.*", options.new_lr_mult), (".*", options.lr_mult)),
                  terms=(("source_full_softmax", float(o.source_weight)),))


def cross_user(options, roles):
  """Overlapping users (cross-platform / cross-app): the pretrained model (everything loaded,
  trains at lr_mult) also reads each target user's source-domain history (data.source_domain,
  users matched by raw key): cross_user.mode="merged" merges it chronologically into the input
  (source items embedded by a trainable copy of the pretrained item table, plus domain
  embeddings), "prefix" puts one token before the target items whose vector is a projection
  (new_lr_mult) of the frozen source encoder's representation of that history. Users without a
  source history get the plain input."""
  o = options.cross_user
  if o.mode not in insert.CROSS_USER_MODES:
    raise ValueError(f"Unknown transfer.cross_user.mode {o.mode!r}; valid: {list(insert.CROSS_USER_MODES)}")
  spec = insert.InsertSpec("cross_user", (("mode", o.mode), ("rows", int(o.rows)), ("source_dim", int(o.source_dim))))
  item_subtree = roles.item_table.rsplit("/", 1)[0]
  graft = (("cross/source_embed", item_subtree),) if o.mode == "merged" else ()
  return Strategy("cross_user", insert=spec, graft=graft, dont_load=(r"cross/(?!source_embed/).*",),
                  schedule=((r"cross/user_table", None), (r"cross/source_embed/.*", options.lr_mult),
                            (r"cross/.*", options.new_lr_mult), (".*", options.lr_mult)))


def l2sp(options, roles):
  """L2-SP (Li et al., ICML 2018): full fine-tuning (lr_mult, optional layer-wise decay) with a
  penalty toward the pretrained starting point (l2sp.alpha) and plain L2 on fresh params
  (l2sp.beta); the starting point is train state of the runtime hook xrec/train/hooks/l2sp.py."""
  o = options.l2sp
  if not (o.alpha >= 0 and o.beta >= 0 and o.alpha + o.beta > 0):
    raise ValueError(f"transfer.l2sp needs alpha >= 0 and beta >= 0, not both 0; got alpha={o.alpha!r}, "
                     f"beta={o.beta!r}")
  return Strategy("l2sp", schedule=tuple(schedules.layerwise_decay(roles, options.layerwise_decay, options.lr_mult)))


def bitfit(options, roles):
  """Only biases (attention, MLP, convolutions, output bias) and norm parameters (scale, bias)."""
  lr = options.lr_mult
  return Strategy("bitfit", schedule=((r"(.*/)?bias", lr), (r".*/scale", lr), *_bias(roles, lr),
                                      (_item_tables(roles), _item_mult(options)), (".*", None)))


STRATEGIES: dict[str, Callable[[Any, Roles], Strategy]] = {
    "scratch": scratch,
    "zero_shot": zero_shot,
    "full_finetune": full_finetune,
    "linear_probe": linear_probe,
    "frozen_encoder": frozen_encoder,
    "adaptor_only": adaptor_only,
    "embedding_transfer": embedding_transfer,
    "partial_freeze": partial_freeze,
    "reuse_bottom": reuse_bottom,
    "adapter": adapter,
    "lora": lora,
    "prompt": prompt,
    "bitfit": bitfit,
    "patch": patch,
    "dann": dann,
    "shared_private": shared_private,
    "distill": distill,
    "prune": prune,
    "multi_domain": multi_domain,
    "cross_user": cross_user,
    "l2sp": l2sp,
}
INSERTING = {"adapter": "adapter", "lora": "lora", "prompt": "prompt", "patch": "patch"}  # preset -> module kind


# preset -> the runtime hooks it trains with (xrec/train/hooks: extra inputs, streams, train state,
# after-update work, results); presets not named here need none
RUNTIME = {"distill": ("distill",), "prune": ("prune",), "cross_user": ("cross_user",),
           "multi_domain": ("domains",), "shared_private": ("domains",), "l2sp": ("l2sp",)}

CAUSAL_ONLY = ("dann", "shared_private", "distill", "multi_domain", "cross_user")  # their objective terms score next items from every position


def applicable(roles: Roles, causal: bool = True) -> list[str]:
  """The presets that apply to an encoder with these roles (causal: next-item encoders)."""
  kinds = insert.applicable_kinds(roles)
  out = [n for n in STRATEGIES if n not in INSERTING or INSERTING[n] in kinds]
  if not causal:
    out = [n for n in out if n not in CAUSAL_ONLY]
  if not roles.blocks:
    out = [n for n in out if n not in ("partial_freeze", "reuse_bottom")]
  if not roles.item_table:
    out = [n for n in out if n not in ("linear_probe", "embedding_transfer", "dann", "shared_private", "cross_user")]
  if not roles.item_adaptor:  # items by ID only
    out = [n for n in out if n != "adaptor_only"]
  return out


def get_strategy(name: str, options, roles: Roles, causal: bool = True) -> Strategy:
  """The preset `name` built from `options` (config.transfer) for an encoder with `roles`."""
  if name not in STRATEGIES:
    raise ValueError(f"Unknown transfer strategy {name!r}; valid: {sorted(STRATEGIES)}")
  if name not in applicable(roles, causal):
    raise ValueError(f"transfer.strategy={name!r} does not apply to this encoder; strategies that "
                     f"apply: {applicable(roles, causal)}")
  return STRATEGIES[name](options, roles)

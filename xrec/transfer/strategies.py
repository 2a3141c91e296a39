"""Named transfer strategies: small functions from options to declarative surgery.

Each preset takes the `config.transfer` options and the model's number of blocks
and returns a `Strategy`: what to load (rename / graft / dont_load), the
trainable schedule `(regex, lr_mult | None)` (first match wins, None = frozen),
and the optional SASRec modules the target model needs. The registry is
explicit: an unknown name fails with the list of valid names.

Multipliers: `lr_mult` scales the lr of pretrained params that train,
`new_lr_mult` that of freshly initialised ones (inserted modules, new blocks);
`scratch` always trains at 1.0. The item table row mapping by key and the
position resize are applied by xrec/transfer/apply.py for every loading preset.

Paths of the parameter-efficient modules (see xrec/models/sasrec.py):
  adapter  block_{i}/adapter_{attn,mlp}/...      lora   block_{i}/{attn,mlp}/lora_{name}/...
  prompt   block_{i}/attn/prompt{,_gate}         patch  block_{i}/patch/...
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from xrec.models.sasrec import ADAPTER_KINDS, LORA_TARGETS
from xrec.transfer import schedule as S

ITEM_TABLES = r"(item_embed|output_embed)/embedding"  # input table (tied: also output) and untied output
ADAPTER_PARAMS = r"block_\d+/adapter_(attn|mlp)/.*"
LORA_PARAMS = r"block_\d+/(attn|mlp)/lora_[a-z]+/.*"
PROMPT_PARAMS = r"block_\d+/attn/prompt(_gate)?"
PATCH_PARAMS = r"block_\d+/patch/.*"


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
  model_fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # SASRec fields to set


def _positive_int(options, field: str) -> int:
  value = options[field]
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"transfer.{field} must be a positive integer, got {value!r}")
  return value


def _bottom_blocks(options, num_layers: int) -> int:
  k = options.bottom_blocks
  if not isinstance(k, int) or not 0 <= k <= num_layers:
    raise ValueError(f"transfer.bottom_blocks={k!r} must be an integer in [0, {num_layers}] "
                     f"(model.num_layers={num_layers})")
  return k


def _bottom_frozen(k: int) -> list[tuple[str, None]]:
  """The position table and blocks 0..k-1 frozen (nothing when k == 0)."""
  if not k:
    return []
  return [("pos_embed/.*", None)] + [(f"block_{i}/.*", None) for i in range(k)]


def _blocks_from(k: int) -> str:
  """Regex for every path under block_{i} with i >= k."""
  if not k:
    return r"block_\d+/.*"
  return r"block_(?!(?:" + "|".join(str(i) for i in range(k)) + r")/)\d+/.*"


ITEM_TABLE_RULES = ("auto", "always", "never")


def _item_mult(options):
  """Item tables of the parameter-efficient presets: frozen unless train_item_embeddings is
  "always" (apply.prepare resolves "auto" from the item overlap before the presets run)."""
  return options.lr_mult if options.train_item_embeddings == "always" else None


def scratch(options, num_layers):
  """No transfer: random init, everything trains at the base learning rate."""
  del options, num_layers
  return Strategy("scratch", load=False, schedule=((".*", 1.0),))


def zero_shot(options, num_layers):
  """The pretrained model on the target as is (items mapped by key), no target training."""
  del options, num_layers
  return Strategy("zero_shot", train=False, schedule=((".*", None),))


def full_finetune(options, num_layers):
  """Parameter transfer: load everything, train everything (lr_mult, optional layer-wise decay)."""
  return Strategy("full_finetune",
                  schedule=tuple(S.layerwise_decay(num_layers, options.layerwise_decay, options.lr_mult)))


def linear_probe(options, num_layers):
  """Feature transfer: frozen encoder and input item table; a separate output head (untied
  output_embed, initialised from the pretrained item table, and output_bias) trains."""
  del num_layers
  return Strategy("linear_probe", model_fields={"tie_embeddings": False},
                  graft=(("output_embed", "item_embed"),),
                  schedule=(("output_embed/embedding", options.lr_mult),
                            ("output_bias", options.lr_mult), (".*", None)))


def frozen_encoder(options, num_layers):
  """Feature transfer: blocks, positions and final_ln frozen; item tables and output bias train."""
  del num_layers
  return Strategy("frozen_encoder", schedule=((ITEM_TABLES, options.lr_mult),
                                              ("output_bias", options.lr_mult), (".*", None)))


def partial_freeze(options, num_layers):
  """Shared layers: positions and the bottom `bottom_blocks` blocks frozen, the rest trains."""
  k = _bottom_blocks(options, num_layers)
  return Strategy("partial_freeze", schedule=tuple(_bottom_frozen(k) + [(".*", options.lr_mult)]))


def reuse_bottom(options, num_layers):
  """Shared layers: the bottom `bottom_blocks` pretrained blocks (and positions) kept frozen,
  blocks above are freshly initialised and train at new_lr_mult; item tables, output bias and
  final_ln are loaded and train at lr_mult. The checkpoint may have more or fewer blocks above."""
  k = _bottom_blocks(options, num_layers)
  new_blocks = _blocks_from(k)
  return Strategy("reuse_bottom", dont_load=(new_blocks,),
                  schedule=tuple(_bottom_frozen(k) + [(new_blocks, options.new_lr_mult),
                                                      (".*", options.lr_mult)]))


def _parameter_efficient(name, options, inserted: str, model_fields: dict) -> Strategy:
  """Pretrained model frozen; inserted modules (fresh, zero-initialised) train at new_lr_mult,
  the output bias (per-item popularity of the target) at lr_mult, item tables only with
  transfer.train_item_embeddings (by default when the catalogues barely overlap)."""
  return Strategy(name, dont_load=(inserted,), model_fields=model_fields,
                  schedule=((inserted, options.new_lr_mult), ("output_bias", options.lr_mult),
                            (ITEM_TABLES, _item_mult(options)), (".*", None)))


def adapter(options, num_layers):
  """Bottleneck adapters after attention and MLP of every block (serial or parallel)."""
  del num_layers
  if options.adapter_kind not in ADAPTER_KINDS:
    raise ValueError(f"Unknown transfer.adapter_kind {options.adapter_kind!r}; valid: {list(ADAPTER_KINDS)}")
  return _parameter_efficient("adapter", options, ADAPTER_PARAMS, {
      "adapter_dim": _positive_int(options, "adapter_dim"), "adapter_kind": options.adapter_kind})


def lora(options, num_layers):
  """Rank-`lora_rank` updates on the projections named in lora_targets."""
  del num_layers
  targets = tuple(options.lora_targets)
  unknown = [t for t in targets if t not in LORA_TARGETS]
  if unknown or not targets:
    raise ValueError(f"transfer.lora_targets={targets!r}: unknown or empty {unknown}; "
                     f"valid: {list(LORA_TARGETS)}")
  return _parameter_efficient("lora", options, LORA_PARAMS, {
      "lora_rank": _positive_int(options, "lora_rank"), "lora_targets": targets})


def prompt(options, num_layers):
  """`num_prompts` learned prefix tokens per block, mixed in through zero-initialised gates."""
  del num_layers
  return _parameter_efficient("prompt", options, PROMPT_PARAMS,
                              {"num_prompts": _positive_int(options, "num_prompts")})


def patch(options, num_layers):
  """PeterRec-style model patches: a bottleneck beside every block."""
  del num_layers
  return _parameter_efficient("patch", options, PATCH_PARAMS,
                              {"patch_dim": _positive_int(options, "patch_dim")})


def bitfit(options, num_layers):
  """Only biases (attention, MLP, output bias) and norm parameters (LayerNorm scale and bias)."""
  del num_layers
  lr = options.lr_mult
  return Strategy("bitfit", schedule=((r".*/bias", lr), (r".*/scale", lr), ("output_bias", lr),
                                      (ITEM_TABLES, _item_mult(options)), (".*", None)))


STRATEGIES: dict[str, Callable[[Any, int], Strategy]] = {
    "scratch": scratch,
    "zero_shot": zero_shot,
    "full_finetune": full_finetune,
    "linear_probe": linear_probe,
    "frozen_encoder": frozen_encoder,
    "partial_freeze": partial_freeze,
    "reuse_bottom": reuse_bottom,
    "adapter": adapter,
    "lora": lora,
    "prompt": prompt,
    "bitfit": bitfit,
    "patch": patch,
}


def get_strategy(name: str, options, num_layers: int) -> Strategy:
  """The preset `name` built from `options` (config.transfer) for a model with num_layers blocks."""
  if name not in STRATEGIES:
    raise ValueError(f"Unknown transfer strategy {name!r}; valid: {sorted(STRATEGIES)}")
  return STRATEGIES[name](options, num_layers)

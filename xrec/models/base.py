"""The encoder contract: what every sequence encoder in xrec exposes. This docstring is the reference.

An encoder is a functional linen Module over item-id sequences `inputs [batch, max_len]`,
right-aligned (the most recent item at position max_len - 1) and left-padded with 0. Item id i
(1 <= i <= num_items) is the domain's i-th item; rows of the item table beyond num_items + 1
are sharding padding (the table has `vocab_size` rows, a multiple of model.vocab_multiple) and
are never scored.

Methods
  encode(inputs, deterministic=True) -> hidden [batch, len, embed]   (compute dtype)
      causal encoders: hidden[:, t] depends on inputs[:, :t + 1] only;
      bidirectional ones: on the whole sequence (padding excluded).
  output_table() -> (table [vocab, embed], bias [vocab])
      what hidden states are scored against (`common.score_items`): the item table itself when
      embeddings are tied (model.tie_embeddings), else a separate output table.
  __call__(inputs, deterministic=True) -> (hidden, table, bias)
      what the training objectives take (xrec/train/objectives.py).
  score_last(inputs) -> scores [batch, vocab] float32
      scores of every item as the NEXT item after each sequence (evaluation). Causal encoders
      score from the last position; bidirectional ones append the mask token and score it.
      It scores `last_states(scoring inputs)` [batch, embed], by default encode(...)[:, -1]; an
      encoder may compute that state for less (Transformers: the last block only at the last
      position).
  roles() -> Roles
      the encoder's params by role (below). Transfer, objectives, evaluation and the trainer
      address params through roles, never through one model's paths.

Class attributes
  name: str           the registry name (model.name)
  causal: bool        True: next-item objectives apply; False: the cloze objective
                      (xrec/train/objectives.py checks the pairing)
  uses_mask_token: bool  True: id num_items + 1 is the [MASK] token (`mask_token_id`), so the
                      table has one more row than the items and padding
  fitted: bool        True: params come from counting, not from gradients: such an encoder has
                      fit_params(item_counts [num_items + 1]) -> params (popularity)
  trims_left_padding: bool (optional, default False)  True: the states of an input without some of
                      its left padding ([batch, L], L < max_len, read as the last L positions)
                      equal those of the full input up to float rounding, so evaluation may cut
                      each batch to the slots its longest history needs (xrec/evaluate/evaluator.py)

Param trees are plain nested dicts with readable `a/b/c` paths and logical axis names (`vocab`,
`embed`, `mlp`, `heads`, `kv`) on the large params, so sharding rules apply.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Roles:
  """An encoder's params by role. Paths are `a/b/c` names in the param tree; subtrees are
  prefixes (`block_0` covers every path under it)."""

  item_table: str | None  # input item embedding [vocab, embed] (None: the model has none)
  output_bias: str | None  # per-item output bias [vocab] (None: the model has none, model.output_bias=False)
  output_table: str | None = None  # separate output embedding [vocab, embed] (untied models)
  positions: str | None = None  # position embedding [max_len, embed]
  # which end of the window the position rows count from: "end" (row max_len - 1 is the newest
  # item, the inputs being right-aligned) or "start" (row 0 is the window's oldest item)
  positions_from: str = "end"
  blocks: tuple[str, ...] = ()  # the ordered blocks (subtrees), bottom first
  final_norm: str | None = None  # subtree of the norm after the last block
  # Where the transfer layer may insert parameter-efficient modules (module paths):
  sublayers: tuple[str, ...] = ()  # adapters: output y of each becomes y + adapter(.)
  projections: tuple[str, ...] = ()  # LoRA: dense projections W x -> W x + B A x
  attention: tuple[str, ...] = ()  # prompts: attention modules with query/key/value/out projections
  norms: tuple[str, ...] = ()  # LayerNorm modules (partitioned per domain by STAR)
  # Text-based items (model.item_repr text / text+id, common.TextItems):
  item_text: str | None = None  # the items' text embeddings [vocab, text]: set from the current
  #                               catalogue, never loaded from a checkpoint, never trained
  item_adaptor: str | None = None  # subtree of the adaptor from text embeddings to the model width
  item_tower: str | None = None  # subtree of a tuned text tower's trainable part (model.text.tune; its
  #                                frozen part, cached token states and base weights, is item_text)
  item_text_data: tuple[str, ...] = ()  # every subtree the items' text data may take in this encoder
  #                                      (a frozen table, a tuned tower's states): never loaded

  @property
  def item_rows(self) -> tuple[str, ...]:
    """Params with one row per item id (moved between vocabularies by raw item key)."""
    return tuple(p for p in (self.item_table, self.output_table, self.output_bias) if p)

  @property
  def item_rows_regex(self) -> str:
    return "|".join(re.escape(p) for p in self.item_rows)

  @staticmethod
  def subtree_regex(prefix: str) -> str:
    """Regex of every path under the subtree `prefix` (or the path itself)."""
    return re.escape(prefix) + r"(/.*)?"

  def blocks_regex(self, which) -> str | None:
    """Regex of every path under the given blocks (indices into `blocks`); None when empty."""
    names = [self.blocks[i] for i in which]
    if not names:
      return None
    return "(" + "|".join(re.escape(n) for n in names) + ")(/.*)?"

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def check_inputs(inputs, max_len: int, shorter_ok: bool = False) -> None:
  """Inputs are [batch, max_len]; an encoder whose result does not depend on left padding
  (trims_left_padding) also takes the last L <= max_len slots (evaluation length buckets)."""
  length = inputs.shape[-1]
  if length != max_len and not (shorter_ok and 0 < length < max_len):
    raise ValueError(f"inputs length {length} != model max_len {max_len}")

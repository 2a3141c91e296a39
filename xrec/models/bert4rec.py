"""BERT4Rec (Sun et al., 2019): bidirectional self-attention trained with a cloze objective.

The Transformer body of xrec/models/transformer.py without the causal mask: every position sees
the whole sequence (padding excluded). Training masks random positions with the [MASK] token
(id num_items + 1, a row of the item table) and predicts the items there (the `cloze` objective
term, xrec/train/objectives.py). To score the next item, evaluation drops the oldest item,
appends [MASK] at the last position and scores the hidden state there.
"""

from __future__ import annotations

from xrec.models.transformer import TransformerEncoder


class BERT4Rec(TransformerEncoder):
  """Inputs: item ids [batch, max_len], right-aligned, 0 = padding, num_items + 1 = [MASK]."""

  causal = False
  uses_mask_token = True

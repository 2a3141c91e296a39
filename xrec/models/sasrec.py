"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

A pre-LN Transformer (xrec/models/transformer.py) whose position t attends to positions <= t, so
every position predicts the next item (next-item objectives). Param tree and roles: see
transformer.py; with default settings the tree and outputs are exactly those of xrec's SASRec
before the encoder contract (tested against recorded values).
"""

from __future__ import annotations

from xrec.models.transformer import TransformerEncoder


class SASRec(TransformerEncoder):
  """Inputs: item ids [batch, max_len], right-aligned, 0 = padding."""

  causal = True
  uses_mask_token = False

"""The whole default config, `base_config()`: xrec/config.py's core fields plus the defaults each
registry declares next to what it registers (an encoder's `config_defaults` under model.<name>, an
objective term's `options` under objective.<term>, a transfer preset's OPTIONS under
transfer.<group>). It sits above the registries, so that xrec/config.py imports none of them.
"""

from __future__ import annotations

import ml_collections

from xrec import models
from xrec.config import core_config
from xrec.train import objectives
from xrec.transfer import strategies


def base_config() -> ml_collections.ConfigDict:
  """Every field a config may set, with its default; configs/*.py start from it."""
  c = core_config()
  for name, encoder in models.MODELS.items():  # each encoder declares its own fields
    if encoder.config_defaults:
      c.model[name] = ml_collections.ConfigDict(dict(encoder.config_defaults))
  for name, term in objectives.TERMS.items():  # each term declares its options (objectives.py)
    if term.options:
      c.objective[name] = ml_collections.ConfigDict(dict(term.options))
  c.transfer = strategies.default_transfer_config()  # with per-preset options (strategies.py OPTIONS)
  return c

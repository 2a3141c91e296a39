"""Modules inserted into an encoder from outside (the model files hold no transfer code), one
family per file, one registry of kinds:

  peft.py            adapter | lora | prompt | patch: small modules at the encoder's sublayers,
                     projections, attention modules or blocks, through flax method interception
  heads.py           heads: a domain discriminator and / or a projection beside the encoder
  shared_private.py  shared_private: a private encoder per domain beside the shared one
  cross_user.py      cross_user: the target model also reads each user's source history
  multi_domain.py    multi_domain: per-domain heads (shared_bottom) and STAR's per-domain weights

    module = wrap(encoder, InsertSpec(kind, options))   # options: sorted (name, value) pairs

Every wrapper keeps the encoder's params at their own paths (a pretrained tree loads unchanged)
and starts at the pretrained function (zero-initialised joins; tested per kind and encoder).
"""

from __future__ import annotations

import dataclasses

from xrec.transfer.insert import cross_user, heads, multi_domain, peft, shared_private
from xrec.transfer.insert.cross_user import CROSS_USER_MODES  # noqa: F401 (options the presets check)
from xrec.transfer.insert.multi_domain import MULTI_DOMAIN_KINDS  # noqa: F401
from xrec.transfer.insert.peft import ADAPTER_KINDS, KINDS, LORA_TARGETS, applicable_kinds, points  # noqa: F401


@dataclasses.dataclass(frozen=True)
class InsertSpec:
  kind: str
  options: tuple  # sorted (name, value) pairs


# kind -> builder(encoder, options dict); the PEFT kinds share one builder (peft.PEFT has each)
WRAPPERS = {
    **{kind: (lambda kind: lambda encoder, options: peft.build(encoder, kind, options))(kind) for kind in peft.PEFT},
    "heads": heads.build,
    "shared_private": shared_private.build,
    "cross_user": cross_user.build,
    "multi_domain": multi_domain.build,
}
# wrappers that read the encoder's full-width hidden states and item table
FULL_WIDTH = ("multi_domain", "shared_private", "cross_user")


def wrap(encoder, spec: InsertSpec | None):
  """The encoder with `spec`'s modules inserted (the encoder itself when spec is None). Fails,
  naming what applies, on an unknown kind or one the encoder's roles offer no point for."""
  if spec is None:
    return encoder
  if spec.kind not in WRAPPERS:
    raise ValueError(f"Unknown inserted module kind {spec.kind!r}; valid: {sorted(WRAPPERS)}")
  if spec.kind in FULL_WIDTH and getattr(encoder, "item_columns", ()):
    raise ValueError(f"transfer kind {spec.kind!r} reads the encoder's full-width hidden states and item "
                     "table: it does not apply to a model with narrowed item tables (model.item_columns)")
  return WRAPPERS[spec.kind](encoder, dict(spec.options))

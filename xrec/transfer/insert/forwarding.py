"""What every wrapper of an encoder shares: the encoder contract's attributes forwarded
(`Forwarding`), and its methods run under a wrapper's flax method interception (`Intercepting`)."""

from __future__ import annotations

import flax.linen as nn

from xrec.models import base


class Forwarding:
  """The contract's attributes of a wrapper's `encoder`, forwarded (xrec/models/base.py)."""

  causal = property(lambda self: self.encoder.causal)
  uses_mask_token = property(lambda self: self.encoder.uses_mask_token)
  fitted = property(lambda self: self.encoder.fitted)
  vocab_size = property(lambda self: self.encoder.vocab_size)
  max_len = property(lambda self: self.encoder.max_len)
  num_items = property(lambda self: self.encoder.num_items)

  def roles(self) -> base.Roles:
    return self.encoder.roles()

  def output_table(self):
    return self.encoder.output_table()


class Intercepting(Forwarding):
  """The contract's methods of `encoder`, run under the wrapper's `_interceptor()` (flax method
  interception): a wrapper that changes sublayers of the encoder from outside defines only that."""

  def _run(self, method, *args):
    with nn.intercept_methods(self._interceptor()):
      return getattr(self.encoder, method)(*args)

  def encode(self, inputs, deterministic: bool = True):
    return self._run("encode", inputs, deterministic)

  def __call__(self, inputs, deterministic: bool = True):
    return self._run("__call__", inputs, deterministic)

  def score_last(self, inputs):
    return self._run("score_last", inputs)


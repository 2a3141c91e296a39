"""HSTU (xrec/models/hstu.py): one block against a numpy reference of the paper's formula
(pointwise SiLU attention with a relative bias, no softmax, gated by U), causality, states that do
not depend on left padding, the last-position shortcut, and a run that trains."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from conftest import tiny_config
from xrec import models
from xrec.models.hstu import HSTU, HSTUBlock

INPUTS = jnp.array([[0, 0, 3, 5, 7, 9], [0, 0, 0, 0, 1, 2], [4, 8, 15, 16, 23, 30]], jnp.int32)


def _encoder(**kw):
  return HSTU(num_items=30, vocab_size=32, max_len=6, embed_dim=8, dropout=0.0, num_layers=2, num_heads=2, **kw)


def _silu(x):
  return x / (1 + np.exp(-x))


def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def test_one_block_matches_the_formula():
  block = HSTUBlock(num_heads=2, head_dim=3, max_len=5, dropout=0.0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 4)).astype(np.float32)
  valid = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
  params = block.init(jax.random.key(0), x, valid)["params"]
  params = jax.tree.map(np.asarray, nn.meta.unbox(params))
  params["rab"] = rng.normal(size=5).astype(np.float32)  # a non-zero relative bias
  got = np.asarray(block.apply({"params": params}, x, valid))
  y = _ln(x, params["ln_in"])
  u, v, q, k = (_silu(y @ params[n]["kernel"] + params[n]["bias"]).reshape(2, 5, 2, 3)
                for n in ("gate", "value", "query", "key"))
  want = np.zeros_like(x)
  for b in range(2):
    av = np.zeros((5, 2, 3), np.float32)
    for i in range(5):
      for j in range(i + 1):  # causal; padded keys contribute nothing
        if valid[b, j]:
          w = _silu((q[b, i] * k[b, j]).sum(-1) / np.sqrt(3) + params["rab"][i - j]) / 5  # per head, no softmax
          av[i] += w[:, None] * v[b, j]
    gated = _ln(av.reshape(5, 6), params["ln_attn"]) * u[b].reshape(5, 6)
    want[b] = x[b] + gated @ params["out"]["kernel"] + params["out"]["bias"]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_causal_padding_free_and_the_last_position_shortcut():
  enc = _encoder()
  params = enc.init(jax.random.key(1), INPUTS)["params"]
  hidden = enc.apply({"params": params}, INPUTS, method="encode")
  changed = INPUTS.at[0, 5].set(11)  # a later item never changes an earlier state
  np.testing.assert_allclose(enc.apply({"params": params}, changed, method="encode")[0, :5], hidden[0, :5], atol=1e-6)
  assert not np.allclose(enc.apply({"params": params}, changed, method="encode")[0, 5], hidden[0, 5])
  trimmed = enc.apply({"params": params}, INPUTS[1:2, 2:], method="encode")  # left padding cut
  np.testing.assert_allclose(trimmed, hidden[1:2, 2:], atol=1e-5)
  last = enc.apply({"params": params}, INPUTS, method="last_states")
  np.testing.assert_allclose(last, hidden[:, -1], atol=1e-5)
  assert enc.trims_left_padding and enc.causal


def test_hstu_trains_end_to_end(data_dir, tmp_path):
  from xrec.train.loop import train_and_evaluate
  c = tiny_config(data_dir)
  c.model.name = "hstu"
  c.model.hstu.update(dict(num_layers=2, num_heads=2))
  c.train.update(dict(num_steps=30, eval_every_steps=10, log_every_steps=5))
  results = train_and_evaluate(c, str(tmp_path / "run"))
  assert results["model"]["encoder"] == "HSTU" and results["test"]["num_users"] > 0
  import json
  losses = [r["loss"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["split"] == "train"]
  assert np.mean(losses[-2:]) < losses[0]
  assert "hstu" in models.MODELS

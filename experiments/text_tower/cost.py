"""The cost of each text tower (model.text.tune): what one training step spends on the item side.

For a catalogue's item texts (MovieLens-1M's titles and genres from --data, or synthetic titles),
builds the item side of a text model (common.TextItems: tower + UniSRec adaptor to d 64) for each
tower and times the forward and backward pass of a full-softmax loss over the whole catalogue
(every item scored, as a training step does), with the trainable params, the bytes a target stores
and the cached token states; and checks that each tower at step 0 gives the frozen encoder's
vectors (largest absolute difference over the catalogue). The sequence encoder's share of a step is the same for every tower
(experiments/bench: about 1.1 s per step at ML-1M's shape on one core), so the difference between
towers is this script's number.

  python experiments/text_tower/cost.py --data ../shared/data --out experiments/text_tower/results/cost_<commit>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from xrec.models import common  # noqa: E402
from xrec.models import text_tower as tt  # noqa: E402
from xrec.train import item_text  # noqa: E402

TOWERS = (("frozen", "", 0), ("lora, 6 layers", "lora", 6), ("full, top layer", "full", 1),
          ("full, 2 layers", "full", 2), ("full, 6 layers", "full", 6))


def movielens_texts(folder: str) -> list[str]:
  """'Title (year) Genre|Genre' of every movie in ml-1m/movies.dat (latin-1, '::' separated)."""
  with open(os.path.join(folder, "ml-1m", "movies.dat"), encoding="latin-1") as f:
    return [" ".join(line.rstrip("\n").split("::")[1:]) for line in f if line.strip()]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  words = ["love", "night", "man", "story", "war", "city", "last", "dead", "girl", "house", "king", "dream"]
  genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Thriller", "Sci-Fi", "Children's"]
  return [" ".join(rng.choice(words, rng.integers(1, 5))) + f" ({rng.integers(1930, 2001)}) "
          + "|".join(rng.choice(genres, rng.integers(1, 4), replace=False)) for _ in range(n)]


def time_tower(encoder, texts, mode: str, layers: int, embed_dim: int, rounds: int, bucketed: bool = True) -> dict:
  n = len(texts)
  if mode:
    frozen = encoder.config.num_hidden_layers - layers
    data, extra = item_text.tower_rows(*encoder.token_states(texts, frozen))
    buckets = extra["buckets"] if bucketed else ()
    spec = tt.TowerSpec(mode, layers, 8, data["states"].shape[1], encoder.tower_arch(), buckets).checked()
    data["base"] = jax.tree.map(np.asarray, encoder.layer_weights(frozen))
  else:
    spec, data = None, {"table": np.pad(encoder.embed(texts), ((1, 0), (0, 0)))}
  items = common.TextItems(vocab_size=n + 1, text_dim=encoder.dim, embed_dim=embed_dim, experts=8, tower_spec=spec)
  params = nn.unbox(items.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
  frozen_part = {"text": data} if mode else data
  trainable = {k: v for k, v in params.items() if k not in ("text", "table")}
  hidden = jnp.asarray(np.random.default_rng(0).normal(size=(128, embed_dim)), jnp.float32)
  targets = jnp.asarray(np.random.default_rng(1).integers(1, n + 1, 128))

  @jax.jit
  def step(trainable):
    def loss(tr):
      table = items.apply({"params": {**frozen_part, **tr}}, method=lambda m: m.embedding)
      logits = hidden @ table.T
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(128), targets])
    return jax.value_and_grad(loss)(trainable)

  # at step 0 a tuned tower is the pretrained encoder: its vectors against the frozen encoder's
  vectors = np.asarray(items.apply({"params": {**frozen_part, **trainable}}, method=lambda m: m.text_vectors()))[1:]
  step0 = float(np.abs(vectors - encoder.embed(texts)).max())
  jax.block_until_ready(step(trainable))  # compile
  times = []
  for _ in range(rounds):
    t0 = time.time()
    jax.block_until_ready(step(trainable))
    times.append(time.time() - t0)
  count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))  # noqa: E731
  return {"seconds_per_step": float(np.median(times)), "all_seconds": times,
          "trainable_params": count(trainable), "stored_bytes_per_target": 4 * count(trainable),
          "cached_bytes": int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(frozen_part))),
          "tokens": int(spec.tokens) if spec else None, "buckets": list(spec.buckets) if spec else None,
          "step0_max_abs_diff_vs_frozen_encoder": step0}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default="", help="the folder holding ml-1m/ (else synthetic titles)")
  ap.add_argument("--items", type=int, default=0, help="use the first N texts (0: all)")
  ap.add_argument("--encoder", default="minilm")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--unbucketed", action="store_true", help="also time each tower with every row at the "
                  "longest text's width (no length buckets)")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  texts = movielens_texts(args.data) if args.data else synthetic_texts(args.items or 2000)
  texts = texts[:args.items] if args.items else texts
  encoder = item_text.load_encoder(args.encoder)
  lengths = np.array([len(encoder.tokenizer.tokenize(t)) + 2 for t in texts])
  result = {"encoder": args.encoder, "encoder_folder": encoder.name, "encoder_fingerprint": encoder.fingerprint,
            "items": len(texts), "texts": "movielens-1m movies.dat: title (year) genres, the first --items lines"
            if args.data else "synthetic", "tokens_per_text": {"mean": float(lengths.mean()), "max": int(lengths.max())},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "towers": {}}
  if args.data:
    every = [len(encoder.tokenizer.tokenize(t)) + 2 for t in movielens_texts(args.data)]
    result["tokens_per_text_all_movies"] = {"movies": len(every), "mean": float(np.mean(every)), "max": int(max(every))}
  for name, mode, layers in TOWERS:
    result["towers"][name] = time_tower(encoder, texts, mode, layers, 64, args.rounds)
    print(name, json.dumps({k: v for k, v in result["towers"][name].items() if k != "all_seconds"}), flush=True)
    if mode and args.unbucketed:
      name += ", no length buckets"
      result["towers"][name] = time_tower(encoder, texts, mode, layers, 64, args.rounds, bucketed=False)
      print(name, json.dumps({k: v for k, v in result["towers"][name].items() if k != "all_seconds"}), flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()

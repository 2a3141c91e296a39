"""Does the arithmetic follow the cores a process sees? Run it pinned and not, and compare hashes.

  taskset -c 1 python experiments/real_data/probes/cores.py kernel
  python experiments/real_data/probes/cores.py kernel
  taskset -c 1 python experiments/real_data/probes/cores.py stage STAGE_JSON --steps 40 [--manual_dir DIR]
  taskset -c 1 python experiments/real_data/probes/cores.py stage STAGE_JSON --stop_after 300
  XREC_PIN_CORE=1 python experiments/real_data/probes/cores.py stage STAGE_JSON --steps 60  (a --jobs worker's pinning)

`kernel`: a softmax cross-entropy's gradient over 25,600 rows and a 1.6M-element sum (jitted), each
printed as the sha256 of its bytes. `stage`: the config of a stored stage (a workdir's
stages/<hash>/stage.json, or a committed source model's) trained for --steps steps in a new folder,
then the sha256 of its final parameters and its validation NDCG@10; with --stop_after, the stage's
own budget cut after that many steps, and its validation curve (to compare with the stage's
metrics.jsonl). XLA_FLAGS and the rest of the
environment are the caller's (a `--jobs` worker adds --xla_cpu_multi_thread_eigen=false).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from xrec.train import parallel  # noqa: E402
from xrec.train.checkpoint import restore_best_params  # noqa: E402
from xrec.train.loop import host, train_and_evaluate  # noqa: E402


def digest(*arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.asarray(a).tobytes())
  return h.hexdigest()[:16]


def kernel(rows: int = 128 * 200, items: int = 3700) -> dict:
  """A batch of 128 sequences of 200 positions scored against ML-1M's ~3,700 items, as a step does."""
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x, w = jax.random.normal(k[0], (rows, 64)), jax.random.normal(k[1], (64, items))
  y = jax.random.randint(k[2], (rows,), 0, items)

  def loss(w, x):
    logits = x @ w
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])
  grad_w, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, x)
  return {"matmul": digest(jax.jit(jnp.matmul)(x, w)), "grad_w": digest(grad_w), "grad_x": digest(grad_x),
          "sum": digest(jax.jit(jnp.sum)(x))}


def stage(path: str, steps: int, manual_dir: str, stop_after: int) -> dict:
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  if manual_dir:
    config.data.movielens.manual_dir = manual_dir
  workdir = tempfile.mkdtemp(prefix="cores_probe_")
  try:
    if stop_after:  # the stage's own budget and schedule, cut after `stop_after` steps: its curve so far
      config.train.stop_after_steps = stop_after
      train_and_evaluate(config, workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        curve = [json.loads(line) for line in f]
      return {"valid_ndcg@10": {r["step"]: r["ndcg@10"] for r in curve if r["split"] == "valid"}}
    config.train.update(num_steps=steps, eval_every_steps=steps, checkpoint_every_steps=steps,
                        early_stopping_patience=0)
    results = train_and_evaluate(config, workdir)
    return {"params": digest(*jax.tree_util.tree_leaves(restore_best_params(workdir))),
            "step": results.get("best_step"), "valid_ndcg@10": results["valid"]["ndcg@10"],
            "train_sequences_per_second": results["throughput"]["train_sequences_per_second"]}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=("kernel", "stage"))
  parser.add_argument("stage_json", nargs="?")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--stop_after", type=int, default=0,
                      help="keep the stage's budget, stop after this many steps and print its validation curve")
  parser.add_argument("--manual_dir", default="", help="data.movielens.manual_dir (the stage's is relative to its launch)")
  args = parser.parse_args()
  pinned = parallel.pin_worker()  # XREC_PIN_CORE=k: pinned to core k after JAX started, as a --jobs worker
  if args.what == "stage" and not args.stage_json:
    parser.error("stage needs STAGE_JSON (stages/<hash>/stage.json)")
  out = kernel() if args.what == "kernel" else stage(args.stage_json, args.steps, args.manual_dir, args.stop_after)
  seen = host()
  print(json.dumps({**out, "cores_visible": seen["cores_visible"], "pinned_after_start": pinned,
                    "xla_flags": seen["xla_flags"]}))


if __name__ == "__main__":
  main()

"""The metrics of an unfinished run at its best validation checkpoint so far.

  python -m xrec.train.interim STAGE_DIR [--out FILE]

A run cut before it finished (a session's end, a preempted job) keeps its checkpoints and its
validation curve but has no test metrics: results.json is written only when training stops. This
evaluates the stage's best checkpoint so far on the validation and test splits, with the config,
data and evaluator the run itself uses (its stage.json), and says what the numbers are: the best
validation step so far, the last step evaluated and how many evaluations have passed since the
best, against the run's early-stopping patience. Until the run finishes, a later evaluation can
still beat that step: these are interim numbers, never a finished run's result. Nothing is written
into the stage (what building the run writes goes to a temporary folder), so the run can go on or
resume afterwards. A transfer stage needs what it loads (its pretraining's folder) on this machine,
as the run itself does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from xrec import runindex
from xrec.config import dotted, with_overrides
from xrec.defaults import base_config
from xrec.train import checkpoint as ckpt
from xrec.train import experiment
from xrec.train import loop

STAGE_FILE = "stage.json"


def stage_config(stage_dir: str):
  """The config a stage ran with (its stage.json), as a ConfigDict."""
  path = os.path.join(stage_dir, STAGE_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {stage_dir!r} is no stage folder (a study's "
                            "WORKDIR/stages/<hash>/, written when the stage starts)")
  with open(path) as f:
    return with_overrides(base_config(), experiment.renamed(dotted(json.load(f)["config"])), "stage.json field")


def curve(stage_dir: str, metric: str, eval_every: int = 0, num_steps: int = 0) -> dict:
  """What the stage's validation curve says so far (metrics.jsonl). `evals_since_best` counts the
  regular evaluations after the best (every `eval_every` steps and the last step, `num_steps`), as
  the loop's patience does: the extra ones of train.eval_at_steps do not count (0: every row)."""
  path = os.path.join(stage_dir, "metrics.jsonl")
  rows = []
  if os.path.isfile(path):
    with open(path) as f:  # one row per step: a resumed run may log an evaluation again
      rows = list({r["step"]: r for r in map(json.loads, f) if r.get("split") == "valid"}.values())
    rows.sort(key=lambda r: r["step"])
  if not rows:
    raise ValueError(f"{stage_dir} has no validation evaluation yet ({path}): nothing to report")
  best = max(rows, key=lambda r: (r[metric], -r["step"]))
  last = rows[-1]["step"]
  return {"best_step": best["step"], "best_valid": best[metric], "last_eval_step": last,
          "evaluations": len(rows),
          "evals_since_best": sum(r["step"] > best["step"] and (not eval_every or r["step"] % eval_every == 0
                                                                or r["step"] == num_steps) for r in rows)}


def interim_results(stage_dir: str) -> dict:
  """{"interim": True, "finished", curve fields, "valid", "test", "early_stopping_patience"}: the
  metrics at the best checkpoint so far."""
  config = stage_config(stage_dir)
  metric = config.train.best_metric
  seen = curve(stage_dir, metric, int(config.train.eval_every_steps), int(config.train.num_steps))
  with tempfile.TemporaryDirectory(prefix="xrec-interim-") as scratch:
    spec = loop.door(with_overrides(config, {"train.resume_from": ""}))
    run, hooks, model = loop.build_run(spec, scratch)
    run.num_steps = 1  # the optimizer is built, never stepped
    state, _, _ = loop.start_state(run, hooks, model)
    params, step = ckpt.restore_best_params(stage_dir, state["params"])
    valid = run.evaluate(params, run.domain, "valid")
    test = run.evaluate(params, run.domain, "test")
  if int(step) != int(seen["best_step"]):
    raise ValueError(f"{stage_dir}: the best checkpoint is step {step} but the validation curve's best is "
                     f"step {seen['best_step']}: its checkpoint is being written (retry in a moment), or the run "
                     "was killed between that evaluation and its checkpoint (resume it: it evaluates again)")
  return {"interim": True, "finished": os.path.isfile(os.path.join(stage_dir, "results.json")),
          "stage": os.path.basename(os.path.normpath(stage_dir)), "metric": f"valid {metric}", **seen,
          "early_stopping_patience": int(config.train.early_stopping_patience),
          "protocol_population": run.domain.population.get("description"), "valid": valid, "test": test}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("stage_dir", help="a stage folder: WORKDIR/stages/<hash>/")
  parser.add_argument("--out", help="also write the results here (JSON)")
  args = parser.parse_args(argv)
  try:
    results = interim_results(args.stage_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f"xrec: error: {e}", file=sys.stderr)
    return 2
  if args.out:
    runindex.write_json_atomic(args.out, results)
  metric = results["metric"].split()[-1]
  state = "finished" if results["finished"] else (
      f"not finished: {results['evals_since_best']} of {results['early_stopping_patience']} evaluations "
      "without improvement so far; a later one may still beat it")
  print(f"stage {results['stage']}: best valid {metric} {results['valid'][metric]:.4f} at step "
        f"{results['best_step']} (last evaluated step {results['last_eval_step']}; {state})\n"
        f"test at that step: " + "  ".join(f"{k}={results['test'][k]:.4f}" for k in
                                             ("ndcg@10", "hr@10", "ndcg@20", "hr@20") if k in results["test"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())

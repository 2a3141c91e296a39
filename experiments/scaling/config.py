"""How does transfer scale with the pretrained model and its data? (issue 30)

One encoder family (SASRec: 1 head, feed-forward 4 x d, the real-data presets' reference-code
block and item init) pretrained on a real scenario's source over
a grid of sizes and of source data, then transferred to the target; `analyze.py` fits the gain
over scratch against pretrained params (item table included and excluded) and source interactions.

The argument names the scenario (then that scenario's own arguments, e.g. a file layout):
  ml1m_cross_region (default; same movies, disjoint users) | ml1m_cross_genre (same users,
  disjoint movies: zero_shot is n/a, the strategies start from fresh item tables) | cross_app (two
  interaction files: pass data.files.path and data.scenario.target_files.path, e.g. Amazon Beauty
  -> Toys).
This file is the CPU preset: max_len 50, sizes (d, blocks) (32,1) (64,1) (64,2) (128,2) (128,4)
(256,4), every d of 32 / 64 / 128 / 256 and every depth of 1 / 2 / 4: 137k to 4.1M params with
ML-1M's item table (30x), 14k to 3.2M without it (220x; tests/test_scaling.py counts them). The
target cells' learning rates are ranked at a third of the budget (tune.halving=3, one rung) and
only the best goes on: the wall time of the whole grid is measured when it runs (README). `accelerator.py` is the same
study at max_len 200 going on to (512,8) and (1024,8); `smoke.py` the synthetic scenario with two
tiny sizes and one seed (checks the pipeline, not the question; the tests run it).

Grid (`sweep()`):
  * pretraining: each size on 100% of the source users; the smallest, the middle and the largest
    size also on 25% and 50% (`experiment.pretrain.data.user_fraction`, users drawn once,
    fraction_seed 0). One pretraining per (size, source data), seed 0: the pretrained models are a
    fixed set of checkpoints, as a team reusing a model has one; the seeds vary the target side.
  * transfer from each: zero_shot, full_finetune, frozen_encoder and adapter (the best
    parameter-efficient preset of the synthetic fraction study), at two target user fractions
    (5% and 20%), every cell evaluated on all target users;
  * scratch of every size at both fractions (the gain's baseline; it reads no pretraining, so
    one scratch cell per size serves every source fraction);
  * seeds: 5 for the grid's corners (smallest and largest size at 25% and 100% of the source) and
    their scratch baselines, 3 elsewhere.
  * a second family, HSTU (xrec/models/hstu.py: pointwise SiLU attention, 1 head, no feed-forward)
    at the same (d, blocks), pretrained on all the source users, with scratch and the same four
    strategies at both target fractions, seeds 0-2: its gains are paired with its own scratch
    models, and the fits and the best strategy per size are per family.
Budgets: pretraining as the real-data presets' (up to 200 epochs, early stopping after 10
evaluations every 100 steps: stopped by early stopping rather than cut, which `analyze.py` checks
by reporting every pretraining's best step against its last); every target cell 1,000 steps of batch 128 with
validation at steps 10, 20, 30, 40 and every 50 and early stopping after 5 regular evaluations; learning rates {3e-4, 1e-3, 3e-3} tuned on seed
0's cell only, the other seeds train the chosen value (tune once, recorded per record).

  python launch.py --config experiments/scaling/config.py:ml1m_cross_region --workdir runs/scaling_ml1m --jobs 2
  python experiments/scaling/analyze.py runs/scaling_ml1m --out experiments/scaling/ml1m_cross_region

Results, wall time and the README's headline: experiments/scaling/README.md.
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, as_transfer_study, config_args, load_config_module, real_data_scenario

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("ml1m_cross_region", "ml1m_cross_genre", "cross_app")
PRESETS = {
    "cpu": dict(max_len=50, sizes=((32, 1), (64, 1), (64, 2), (128, 2), (128, 4), (256, 4))),
    "accelerator": dict(max_len=200, sizes=((32, 1), (64, 1), (64, 2), (128, 2), (128, 4), (256, 4), (512, 8),
                                            (1024, 8))),
    "smoke": dict(max_len=20, sizes=((8, 1), (16, 2)), target_fractions=(0.2,), source_fractions=(0.5, 1.0)),
}
# the second family (issue 30): HSTU (xrec/models/hstu.py) at the same (d, blocks), pretrained on all
# the source users, with the interior's seeds; the source-data axis and the 5-seed corners are SASRec's
FAMILIES = ("sasrec", "hstu")
STRATEGIES = ("zero_shot", "full_finetune", "frozen_encoder", "adapter")
TARGET_FRACTIONS = (0.05, 0.2)
SOURCE_FRACTIONS = (0.25, 0.5, 1.0)
INTERIOR_SEEDS = SEEDS[:3]


def _scenario(arg) -> tuple[str, list]:
  parts = [a for a in (arg or "").split(",") if a]
  scenario = parts[0] if parts else "ml1m_cross_region"
  if scenario not in SCENARIOS:
    raise ValueError(f"experiments/scaling: name the scenario first, one of {list(SCENARIOS)}; got {arg!r}")
  return scenario, parts[1:]


def _scenario_config(scenario: str, preset: str, extra: list):
  if preset == "smoke":  # the synthetic setting of the fraction study, smaller
    c = load_config_module(os.path.join(HERE, "..", "fraction_study", "config.py")).synthetic_study_config()
    c.data.synthetic.update(dict(num_source_users=120, num_target_users=80, num_source_items=60,
                                 num_target_items=60, mean_seq_len=10.0, max_seq_len=24))
    c.model.vocab_multiple = 8
    c.experiment.pretrain.train.update(dict(num_epochs=4.0, batch_size=16, eval_every_steps=10,
                                            checkpoint_every_steps=10, early_stopping_patience=3))
    c.train.update(dict(num_steps=20, batch_size=16, eval_every_steps=10, checkpoint_every_steps=10,
                        early_stopping_patience=2))
    c.tune.lr = (1e-3, 3e-3)
    return c
  c = real_data_scenario(",".join([scenario, "cpu", *extra]), os.path.join(HERE, "..", "real_data"))
  c.train.update(dict(num_steps=1000, batch_size=128, eval_every_steps=50, checkpoint_every_steps=250,
                      early_stopping_patience=5))
  return c


def study_config(arg, preset: str):
  """The study's config for `preset` (PRESETS) on the scenario `arg` names (smoke: synthetic)."""
  scenario, extra = ("synthetic", []) if preset == "smoke" else _scenario(arg)
  c = _scenario_config(scenario, preset, extra)
  c.model.max_len = PRESETS[preset]["max_len"]
  c.model.sasrec.update(dict(num_heads=1, num_layers=1, mlp_dim=4 * c.model.embed_dim))
  c.model.hstu.update(dict(num_heads=1, num_layers=1))
  # one pretraining per (size, source data), whatever the target cell's seed
  c.experiment.pretrain.seed = 0
  c.experiment.pretrain.data = ml_collections.ConfigDict({"user_fraction": 1.0, "fraction_seed": 0})
  c.tune.seed = 0  # tune once (the presets set it too): seed 0's cell runs the grid, the others train its choice
  if preset != "smoke":  # successive halving: every lr to budget / 3, the best one on to the budget
    c.tune.update(dict(halving=3, rungs=1))
  return c


def model_fields(family: str, d: int, blocks: int) -> dict:
  """A cell's model overrides: SASRec's (the config's model, feed-forward 4 x d) or HSTU's (no
  feed-forward: its gate U takes that role)."""
  if family == "sasrec":
    return {"model.embed_dim": d, "model.sasrec.num_layers": blocks, "model.sasrec.mlp_dim": 4 * d}
  if family == "hstu":
    return {"model.name": "hstu", "model.embed_dim": d, "model.hstu.num_layers": blocks}
  raise ValueError(f"Unknown scaling family {family!r}; valid: {list(FAMILIES)}")


def grid(preset: str = "cpu"):
  """The cells of `preset` (see the module docstring), seed outermost; the HSTU family's after SASRec's."""
  sizes = PRESETS[preset]["sizes"]
  targets = PRESETS[preset].get("target_fractions", TARGET_FRACTIONS)
  sources = PRESETS[preset].get("source_fractions", SOURCE_FRACTIONS)
  source_axis = {sizes[0], sizes[len(sizes) // 2], sizes[-1]}
  corners = {(size, source) for size in (sizes[0], sizes[-1]) for source in (sources[0], sources[-1])}
  seeds = SEEDS[:1] if preset == "smoke" else SEEDS
  for seed in seeds:
    for size in sizes:
      d, blocks = size
      model = model_fields("sasrec", d, blocks)
      corner_size = any(size == s for s, _ in corners)
      for target in targets:
        if seed in INTERIOR_SEEDS or corner_size:
          yield {"transfer.strategy": "scratch", **model, "data.user_fraction": target, "seed": seed,
                 "data.fraction_seed": seed}
        for source in sources:
          if source != 1.0 and size not in source_axis:
            continue
          if seed not in INTERIOR_SEEDS and (size, source) not in corners:
            continue
          for strategy in STRATEGIES:
            yield {"transfer.strategy": strategy, **model, "experiment.pretrain.data.user_fraction": source,
                   "data.user_fraction": target, "seed": seed, "data.fraction_seed": seed}
  for seed in (s for s in seeds if s in INTERIOR_SEEDS):
    for d, blocks in sizes:
      model = model_fields("hstu", d, blocks)
      for target in targets:
        yield {"transfer.strategy": "scratch", **model, "data.user_fraction": target, "seed": seed,
               "data.fraction_seed": seed}
        for strategy in STRATEGIES:
          yield {"transfer.strategy": strategy, **model, "experiment.pretrain.data.user_fraction": sources[-1],
                 "data.user_fraction": target, "seed": seed, "data.fraction_seed": seed}


def get_config(arg=None):
  return study_config(arg, "cpu")


def sweep():
  return grid("cpu")


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "rows": "transfer.strategy",
          "row_detail": "model.embed_dim"}

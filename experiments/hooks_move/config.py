"""Before/after check of the runtime-hooks move (issue 28): every strategy and data option that
moved behind xrec/train/hooks, run on the code before the move and after it, cell by cell.

A small synthetic cross-platform setting (the same 200 items in both domains, half the users in
both, so that cross_user has source histories and distill's teacher knows the target's items):
400 users per domain, SASRec d 16, 2 blocks; pretraining on the source, then 20% of the target's
users train for 200 steps (evaluated every 50, patience 3) at a fixed lr, all target users
evaluated. One seed: the question is whether the same cell gives the same numbers, not a
comparison between strategies.

  python launch.py --config experiments/hooks_move/config.py --workdir runs/hooks_move
  python experiments/hooks_move/compare.py BEFORE_WORKDIR AFTER_WORKDIR

Results and commands: experiments/hooks_move/README.md.
"""

from xrec.defaults import base_config

CELLS = (
    ("scratch", {}),
    ("full_finetune", {}),
    ("dann", {}),
    ("shared_private", {}),
    ("multi_domain", {}),
    ("distill", {}),
    ("prune", {"transfer.prune.kind": "magnitude"}),
    ("prune", {"transfer.prune.kind": "heads"}),
    ("prune", {"transfer.prune.kind": "items"}),
    ("prune", {"transfer.prune.kind": "dims"}),
    ("cross_user", {"transfer.cross_user.mode": "merged"}),
    ("cross_user", {"transfer.cross_user.mode": "prefix"}),
    ("full_finetune", {"data.synthesis.num_items": 2, "data.synthesis.min_len": 8,
                       "data.synthesis.direction": "forward", "experiment.variant": "synthesis"}),
    ("l2sp", {}),  # added by the move: no "before"
    # the inserted-module kinds (the split of xrec/transfer/insert.py into one file per family)
    ("adapter", {}),
    ("lora", {}),
    ("prompt", {}),
    ("patch", {}),
)


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "pretrain_transfer"
  c.data.synthetic.update(dict(scenario="cross_platform", user_overlap=0.5, num_source_users=400,
                               num_target_users=400, num_source_items=200, num_target_items=200,
                               mean_seq_len=12.0, max_seq_len=40))
  c.model.update(dict(max_len=20, embed_dim=16, vocab_multiple=8))
  c.model.sasrec.update(dict(num_layers=2, num_heads=2, mlp_dim=32))
  c.experiment.pretrain.train.update(dict(num_epochs=10.0, batch_size=32, eval_every_steps=50,
                                          checkpoint_every_steps=100, early_stopping_patience=3))
  c.train.update(dict(num_steps=200, batch_size=32, eval_every_steps=50, checkpoint_every_steps=100,
                      early_stopping_patience=3, progress_bar=False))
  c.optim.lr = 3e-3
  c.data.user_fraction = 0.2
  c.data.eval_population = "all"
  return c


def sweep():
  for strategy, extra in CELLS:
    yield {"transfer.strategy": strategy, "seed": 0, "data.fraction_seed": 0, **extra}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "rows": "transfer.strategy", "columns": ()}

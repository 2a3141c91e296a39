"""The transfer protocol: one evaluation population, budgets in steps, tuned baselines, overlap
rules, and the pretrain -> transfer study that `launch.py` runs for a config without sweep()."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from xrec.data import pipeline, streams
from xrec.train import experiment, runner
from xrec.train.loop import train_and_evaluate


def _config(data_dir):
  c = tiny_config(data_dir)
  c.experiment.mode = "pretrain_transfer"
  c.experiment.strategies = ("scratch", "zero_shot", "full_finetune", "adapter")
  c.experiment.pretrain.train.update(dict(num_epochs=2.0, batch_size=16, eval_every_steps=5,
                                          checkpoint_every_steps=5))
  c.experiment.pretrain.optim.warmup_fraction = 0.2
  c.data.user_fraction = 0.5
  c.train.num_steps = 4
  c.train.eval_every_steps = 2
  return c


def _stage(wd, record, kind="transfer"):
  with open(os.path.join(wd, "stages", record["stages"][kind], "results.json")) as f:
    return json.load(f)


def test_pretrain_once_then_every_strategy_tuned_on_one_population(data_dir, tmp_path):
  wd = str(tmp_path / "exp")
  c = _config(data_dir)
  c.tune.lr = (1e-3, 3e-3)
  c.tune.lr_mult = (0.5, 1.0)
  study = runner.implicit_study(c)
  counts = runner.run_study(c, study, wd)
  assert counts == {"ran": 4, "cached": 0, "failed": 0, "stopped": 0}
  runs = {r["overrides"]["transfer.strategy"]: r for r in runner.read_runs(wd)}
  assert list(runs) == ["scratch", "zero_shot", "full_finetune", "adapter"]
  # one pretraining for every strategy, on the source with all its users
  assert len({r["stages"]["pretrain"] for s, r in runs.items() if s != "scratch"}) == 1
  pre = _stage(wd, runs["adapter"], "pretrain")
  assert pre["config"]["data"]["domain"] == "source" and pre["config"]["data"]["user_fraction"] == 1.0
  # tuning: lr for every trained strategy; lr_mult only where it is not redundant with lr
  assert [len(r["tuning"]["candidates"]) for r in runs.values()] == [2, 1, 2, 4]
  assert "not tuned" in runs["full_finetune"]["tuning"]["transfer.lr_mult"]
  assert runs["zero_shot"]["tuning"]["skipped"] and runs["zero_shot"]["trainable_params"] == 0
  for r in runs.values():  # the chosen candidate has the best validation metric of the grid
    best = max(c["valid"] for c in r["tuning"]["candidates"])
    assert r["valid"]["ndcg@10"] == best
    chosen = [c for c in r["tuning"]["candidates"] if c["stage"] == r["stages"]["transfer"]]
    assert chosen[0]["overrides"] == r["tuning"]["chosen"]
    assert _stage(wd, r)["config"]["optim"]["lr"] == r["tuning"]["chosen"].get("optim.lr", 1e-3)
  # one evaluation population: every target user, the same keys for every strategy
  pops = {json.dumps(r["population"], sort_keys=True) for r in runs.values()}
  assert len(pops) == 1 and runs["scratch"]["population"]["users"] == 60
  assert runs["scratch"]["population"]["training_users"] == 30
  assert all(len(r["test_rank"]) == 60 for r in runs.values())
  # zero-shot = the pretrained model on the target's validation split, before any target step
  ft = _stage(wd, runs["full_finetune"])
  first_eval = [json.loads(x) for x in open(os.path.join(wd, "stages", runs["full_finetune"]["stages"]["transfer"],
                                                           "metrics.jsonl")) if '"valid"' in x][0]
  assert first_eval["step"] == 0
  assert first_eval["ndcg@10"] == pytest.approx(runs["zero_shot"]["valid"]["ndcg@10"], abs=1e-6)
  assert ft["transfer"]["item_overlap"]["overlap_items"] == 200  # cross-region: the same items
  assert ft["budget"]["num_steps"] == 4 and ft["budget"]["warmup_steps"] == 1  # 0.15 of 4 steps
  # the report: one table with the protocol stated under it, the chosen values, the pretraining
  from xrec import report
  md = report.write_report(wd)["markdown"]
  assert "| zero_shot |" in md and "Every cell is evaluated on the same 60 users" in md
  assert "## Values chosen on validation" in md and "## Pretraining (source domain)" in md

  # a rerun reuses every finished cell; a transfer-only change reruns only the transfers
  assert runner.run_study(c, study, wd) == {"ran": 0, "cached": 4, "failed": 0, "stopped": 0}
  mtime = os.path.getmtime(os.path.join(wd, "stages", runs["adapter"]["stages"]["pretrain"], "results.json"))
  c2 = _config(data_dir)
  c2.tune.lr = (3e-3,)  # one candidate: what is checked here is the reuse
  c2.experiment.strategies = ("lora",)
  runner.run_study(c2, runner.implicit_study(c2), wd)
  lora = runner.latest_runs(wd)["transfer.strategy=lora"]
  assert lora["status"] == "done" and lora["reused"] == ["pretrain"]
  assert os.path.getmtime(os.path.join(wd, "stages", lora["stages"]["pretrain"], "results.json")) == mtime


def test_evaluation_users_do_not_depend_on_fraction_strategy_or_seed(data_dir):
  c = tiny_config(data_dir)
  c.data.domain = "target"
  keys = {}
  for fraction in (0.05, 0.2, 1.0):
    for seed in (0, 3):
      c.data.user_fraction, c.data.fraction_seed = fraction, seed
      d = pipeline.load_domain(c.data)
      keys[(fraction, seed)] = [d.user_keys[u] for u in d.eval_users]
      assert len(d.train_users) == round(fraction * 60)
  assert all(k == keys[(1.0, 0)] for k in keys.values()) and len(keys[(1.0, 0)]) == 60
  # the "unseen users" protocol: a fixed held-out set, never trained on, the same for every seed
  c.data.eval_population = "unseen"
  c.data.eval_unseen_fraction = 0.25
  held = None
  for fraction in (0.1, 1.0):
    for seed in (0, 3):
      c.data.user_fraction, c.data.fraction_seed = fraction, seed
      d = pipeline.load_domain(c.data)
      ev = {d.user_keys[u] for u in d.eval_users}
      held = held or ev
      assert ev == held and len(ev) == 15
      assert not ev & {d.user_keys[u] for u in d.train_users}
  assert d.population["training_pool"] == 45 and "held out" in d.population["description"]


def test_step_budget_does_not_depend_on_the_fraction(data_dir, tmp_path):
  results = {}
  for fraction in (0.1, 1.0):
    c = tiny_config(data_dir)
    c.data.domain = "target"
    c.data.user_fraction = fraction
    c.train.update(dict(num_steps=6, eval_every_steps=3))
    results[fraction] = train_and_evaluate(c, str(tmp_path / f"f{fraction}"))
  for r in results.values():
    assert r["budget"]["num_steps"] == 6 and r["budget"]["steps_run"] == 6
    assert r["budget"]["evaluations"] == 3  # steps 0, 3, 6
    assert r["test"]["num_users"] == 60  # every target user
  assert results[0.1]["dataset"]["training_users"] == 6 and results[1.0]["dataset"]["training_users"] == 60
  # the training interactions: every user's sequence without its validation and test items
  from xrec.data import pipeline
  c = tiny_config(data_dir)
  c.data.domain = "target"
  full = pipeline.load_domain(c.data)
  assert results[1.0]["dataset"]["training_interactions"] == int((full.lengths - 2).sum())
  assert 0 < results[0.1]["dataset"]["training_interactions"] < results[1.0]["dataset"]["training_interactions"]
  # the item rows' share of the params: a tied table [rows, 16] and the output bias [rows]
  rows = -(-(results[1.0]["dataset"]["items"] + 1) // 8) * 8
  assert results[1.0]["item_param_count"] == rows * 16 + rows < results[1.0]["param_count"]
  # a pretrain -> transfer study refuses budgets in epochs (few-shot fractions would get fewer steps)
  c = _config(data_dir)
  c.train.num_steps = 0
  with pytest.raises(ValueError, match=r"needs a step budget for the target runs: set train.num_steps > 0"):
    runner.run_study(c, runner.implicit_study(c), str(tmp_path / "epochs"))


def test_test_metrics_come_from_the_best_validation_step_not_the_last(data_dir, tmp_path):
  """A fine-tune at a destructive learning rate: an earlier evaluation is best on validation, and
  the test metrics must be those of that checkpoint's params, not of the final (destroyed) ones."""
  from xrec import models
  from xrec import sharding
  from xrec.evaluate.evaluator import Evaluator
  from xrec.train import checkpoint as ckpt
  c = tiny_config(data_dir)
  train_and_evaluate(c, str(tmp_path / "pre"))
  t = tiny_config(data_dir)
  t.train.init_from = str(tmp_path / "pre")
  t.transfer.strategy = "full_finetune"
  t.optim.update(dict(lr=5.0, clip_norm=0.0, warmup_fraction=0.0, schedule="constant"))  # destroys it
  t.train.update(dict(num_steps=8, eval_every_steps=4, checkpoint_every_steps=8))
  r = train_and_evaluate(t, str(tmp_path / "ft"))
  assert r["best_step"] < r["final_step"] == 8 and not r["budget"]["best_is_last_eval"]
  domain = pipeline.load_domain(t.data)
  module = models.build(t.model, domain.num_items)
  evaluate = Evaluator(module, domain.num_items, t.model.max_len, t.eval, sharding.make_mesh(t.mesh), None)
  best_params, best_step = ckpt.restore_best_params(str(tmp_path / "ft"))
  assert best_step == r["best_step"]
  assert r["test"]["ndcg@10"] == pytest.approx(evaluate(best_params, domain, "test")["ndcg@10"], abs=1e-6)
  # the final params score differently: a loop that evaluated them would fail the line above
  final = evaluate(_latest_params(str(tmp_path / "ft")), domain, "test")["ndcg@10"]
  assert final != pytest.approx(r["test"]["ndcg@10"], abs=1e-6)
  # extra evaluations (train.eval_at_steps) are candidates for the best step but do not count toward
  # the patience: at a learning rate too small to move the params no evaluation improves on step 0,
  # and with patience 1 the run stops at the first regular evaluation (4), not at the first extra one
  t.optim.lr = 1e-12
  t.train.update(dict(eval_at_steps=(1, 2, 3), early_stopping_patience=1, num_steps=12))
  r = train_and_evaluate(t, str(tmp_path / "early"))
  steps = [json.loads(x)["step"] for x in open(tmp_path / "early" / "metrics.jsonl") if '"valid"' in x]
  assert steps == [0, 1, 2, 3, 4] and r["final_step"] == 4 and r["stopped_early"] and r["best_step"] == 0
  assert r["budget"]["eval_at_steps"] == [1, 2, 3] and r["budget"]["evaluations"] == 5


def _latest_params(workdir):
  """The params of the newest train state of a run (restored as saved, no target tree)."""
  import orbax.checkpoint as ocp
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                              item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = mgr.latest_step()
  state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mgr.close()
  return state["params"]


def test_bad_protocol_values_fail_naming_the_field(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.data.domain = "target"
  c.data.user_fraction = 0.001  # round(0.001 * 60) = 0 users
  with pytest.raises(ValueError, match=r"data.user_fraction=0.001 keeps no training user.*Use data.user_fraction >= 0.0167"):
    train_and_evaluate(c, str(tmp_path / "a"))
  c = tiny_config(data_dir)
  c.data.eval_population = "unseen"
  c.data.eval_unseen_fraction = 0.001
  with pytest.raises(ValueError, match=r"data.eval_unseen_fraction=0.001 leaves an empty evaluation population"):
    train_and_evaluate(c, str(tmp_path / "b"))
  c.data.eval_population = "held_out"
  with pytest.raises(ValueError, match=r"Unknown data.eval_population 'held_out'; valid: \['all', 'unseen'\]"):
    train_and_evaluate(c, str(tmp_path / "c"))
  c = tiny_config(data_dir)
  c.train.update(dict(num_steps=3, eval_every_steps=5))
  with pytest.raises(ValueError, match=r"train.num_steps=3 is below one evaluation interval "
                                       r"\(train.eval_every_steps=5\); use train.num_steps >= 5"):
    train_and_evaluate(c, str(tmp_path / "d"))
  c = tiny_config(data_dir)
  c.train.update(dict(num_steps=0, num_epochs=0.1, eval_every_steps=50))
  with pytest.raises(ValueError, match=r"train.num_epochs=0.1 .* below one evaluation interval"):
    train_and_evaluate(c, str(tmp_path / "e"))
  with pytest.raises(ValueError, match="valid: \\['single', 'pretrain_transfer'\\]"):
    c = _config(data_dir)
    c.experiment.mode = "pretrain_only"
    runner.plan_stages(c, str(tmp_path / "stages"))
  assert not any(os.path.exists(tmp_path / x / "results.json") for x in "abcde")


def test_disjoint_catalogue_zero_shot_is_na_and_peft_trains_item_tables(data_dir, tmp_path):
  """cross_app: the target's items are all new. Unseen rows start as distinct random rows,
  zero_shot is n/a, and adapter trains the item tables (auto) and says why."""
  c = _config(data_dir)
  c.data.synthetic.scenario = "cross_app"
  c.experiment.strategies = ("zero_shot", "adapter")
  wd = str(tmp_path / "disjoint")
  runner.run_study(c, runner.implicit_study(c), wd)
  runs = {r["overrides"]["transfer.strategy"]: r for r in runner.read_runs(wd)}
  zs, ad = runs["zero_shot"], runs["adapter"]
  assert zs["item_overlap"]["overlap_items"] == 0 and zs["item_overlap"]["interaction_share"] == 0.0
  assert zs["not_applicable"].startswith("n/a (item overlap 0%)")
  assert ad["item_tables"]["train"] and "auto" in ad["item_tables"]["reason"]
  assert _stage(wd, ad)["transfer"]["items"]["unseen_init"] == "random"
  from xrec import report
  assert "| zero_shot | n/a (item overlap 0%) |" in report.write_report(wd)["markdown"]
  # the item rows the target starts from: distinct (the old "mean" rule gave them one row)
  from xrec.train import checkpoint as ckpt
  pre_params, _ = ckpt.restore_best_params(os.path.join(wd, "stages", ad["stages"]["pretrain"]))
  from xrec.transfer import vocab as V
  with open(os.path.join(wd, "stages", ad["stages"]["pretrain"], "item_keys.json")) as f:
    source_keys = json.load(f)["item_keys"]
  target = pipeline.load_domain(experiment.transfer_config(c, "adapter", "").data)
  table = np.asarray(pre_params["item_embed"]["embedding"])
  rows, report_ = V.map_item_rows(table, np.random.default_rng(0).normal(size=table.shape), source_keys,
                                  target.item_keys, "random")
  assert report_["overlap"] == 0
  assert len({tuple(np.round(r, 6)) for r in rows[1:target.num_items + 1]}) == target.num_items


def test_pretraining_overrides_any_field_and_feeds_another_encoder(data_dir, tmp_path):
  """experiment.pretrain overrides any config field: here the source model is a SASRec while the
  cells train a GRU4Rec on the target from its item table (embedding_transfer, by role)."""
  import ml_collections
  c = _config(data_dir)
  c.experiment.pretrain.model = ml_collections.ConfigDict({"name": "sasrec"})
  cells = [{"model.name": "gru4rec", "transfer.strategy": "embedding_transfer"},
           {"model.name": "sasrec", "transfer.strategy": "full_finetune"}]
  import types
  module = types.SimpleNamespace(sweep=lambda: iter(cells),
                                 metrics=lambda: {"metrics": ("ndcg@10",), "columns": "model.name"})
  wd = str(tmp_path / "xenc")
  assert runner.run_study(c, module, wd)["failed"] == 0
  runs = runner.read_runs(wd)
  assert runs[0]["stages"]["pretrain"] == runs[1]["stages"]["pretrain"]  # one SASRec pretraining
  gru = _stage(wd, runs[0])
  assert gru["model"]["encoder"] == "GRU4Rec" and gru["transfer"]["source_encoder"] == "SASRec"
  assert _stage(wd, runs[0], "pretrain")["model"]["encoder"] == "SASRec"
  c.experiment.pretrain.train.update({"num_epoch": 3.0})  # a typo in the overrides fails before work
  with pytest.raises(ValueError, match=r"experiment.pretrain field 'train.num_epoch': train has no field "
                                       r"'num_epoch'; valid: \[.*'num_epochs'"):
    runner.plan_stages(runner.apply_overrides(c, cells[0]), str(tmp_path / "stages"))


def test_dann_trains_on_both_streams_and_needs_a_source(data_dir, tmp_path):
  c = _config(data_dir)
  c.experiment.strategies = ("dann",)
  # one block: the two-stream steps are large programs (shared-private's: four encoder passes and
  # their gradients), and what is checked here does not depend on the depth
  c.model.sasrec.num_layers = 1
  wd = str(tmp_path / "dann")
  assert runner.run_study(c, runner.implicit_study(c), wd)["failed"] == 0
  run = runner.read_runs(wd)[0]
  stage = os.path.join(wd, "stages", run["stages"]["transfer"])
  rows = [json.loads(x) for x in open(os.path.join(stage, "metrics.jsonl")) if '"train"' in x]
  assert all(0.0 <= r["domain_adversarial/domain_accuracy"] <= 1.0 for r in rows)
  assert all(np.isfinite(r["loss/source_full_softmax"]) for r in rows)
  assert _stage(wd, run)["model"]["objective"] == [["full_softmax", 1.0], ["source_full_softmax", 1.0],
                                                   ["domain_adversarial", 0.1]]
  # the shared-private variant: private encoders, the orthogonality term, each domain's metrics
  c.experiment.strategies = ("shared_private",)
  sp = wd  # the same workdir: the pretraining stage is reused, not trained again
  assert runner.run_study(c, runner.implicit_study(c), sp)["failed"] == 0
  sp_run = runner.latest_runs(sp)["transfer.strategy=shared_private"]
  assert sp_run["reused"] == ["pretrain"]
  result = _stage(sp, sp_run)
  assert result["model"]["objective"][-1] == ["orthogonality", 0.1]
  assert set(result["domains"]) == {"target", "source"}
  rows = [json.loads(x) for x in open(os.path.join(sp, "stages", sp_run["stages"]["transfer"], "metrics.jsonl"))
          if '"train"' in x]
  assert all(np.isfinite(r["loss/orthogonality"]) for r in rows)
  # a single run has no source stream: a clear error
  single = tiny_config(data_dir)
  single.transfer.strategy = "dann"
  single.train.init_from = os.path.join(wd, "stages", run["stages"]["pretrain"])
  with pytest.raises(ValueError, match=r"objective term 'source_full_softmax' reads the stream\(s\) \['source'\].*"
                                       r"data.source_domain"):
    train_and_evaluate(single, str(tmp_path / "single"))


def test_a_source_stream_over_a_disjoint_catalogue_is_refused_naming_its_terms(data_dir):
  # dann / shared_private / multi_domain read the source's users in the target's item ids: with no
  # shared item (ML-1M cross-genre, two S3Rec files) nothing is left, and the error says why and what works
  c = tiny_config(data_dir)
  c.data.synthetic.item_overlap = 0.0
  c.data.domain, c.data.source_domain = "target", "source"
  target = pipeline.load_domain(c.data)
  with pytest.raises(ValueError, match=r"objective terms \['source_full_softmax', 'domain_adversarial'\] train on "
                                       r"the source domain 'source'.*\(0 shared items.*need domains that share items"):
    streams.train_streams(target, c.data, 8, 20, 0, source=("source_full_softmax", "domain_adversarial"))
  c.data.synthetic.item_overlap = 1.0  # the same catalogue: the stream is built
  built = streams.train_streams(pipeline.load_domain(c.data), c.data, 8, 20, 0, source=("source_full_softmax",))
  assert set(built) == {"target", "source"}


def test_distill_a_smaller_student_from_a_teacher(data_dir, tmp_path):
  teacher = tiny_config(data_dir)
  teacher.data.domain = "target"
  train_and_evaluate(teacher, str(tmp_path / "teacher"))
  c = tiny_config(data_dir)
  c.data.domain = "target"
  c.model.name = "gru4rec"
  c.model.embed_dim = 8  # a smaller student of another encoder
  c.transfer.strategy = "distill"
  c.transfer.distill.update(dict(teacher=str(tmp_path / "teacher"), ranking_weight=0.5, hidden_weight=0.5))
  r = train_and_evaluate(c, str(tmp_path / "student"))
  t = r["transfer"]["teacher"]
  assert t["encoder"] == "SASRec" and t["param_count"] > r["param_count"] and t["stored_bytes"] > 0
  assert t["item_overlap"]["overlap_items"] == t["item_overlap"]["target_items"] == 200  # it knows every item
  assert r["model"]["objective"] == [["full_softmax", 1.0], ["distill_logits", 1.0], ["distill_ranking", 0.5],
                                     ["distill_hidden", 0.5]]
  rows = [json.loads(x) for x in open(tmp_path / "student" / "metrics.jsonl") if '"train"' in x]
  assert all(np.isfinite(row["loss/distill_logits"]) and np.isfinite(row["loss/distill_hidden"]) for row in rows)
  from xrec.train import checkpoint as ckpt
  student, _ = ckpt.restore_best_params(str(tmp_path / "student"))
  assert student["heads"]["projection"]["kernel"].shape == (8, 16)  # student width 8 -> teacher width 16
  # no teacher, or a teacher on other items: clear errors
  c.transfer.distill.teacher = ""
  with pytest.raises(ValueError, match=r"'distill' needs a teacher: set transfer.distill.teacher"):
    train_and_evaluate(c, str(tmp_path / "none"))
  source_teacher = tiny_config(data_dir)
  source_teacher.data.synthetic.scenario = "cross_app"
  source_teacher.data.domain = "target"  # cross_app's target items are new keys
  train_and_evaluate(source_teacher, str(tmp_path / "other_items"))
  c.transfer.distill.teacher = str(tmp_path / "other_items")
  c.data.synthetic.scenario = "cross_region"
  with pytest.raises(ValueError, match=r"trained on another item vocabulary: it knows 0 of the target's 200 items "
                                       r"\(0% of its interactions; not e.g. \['i000000', .*\]\), below "
                                       r"transfer.min_item_overlap=0.5"):
    train_and_evaluate(c, str(tmp_path / "mismatch"))


def test_multi_domain_reports_every_domain(data_dir, tmp_path):
  c = _config(data_dir)
  c.experiment.strategies = ("multi_domain",)
  wd = str(tmp_path / "md")
  assert runner.run_study(c, runner.implicit_study(c), wd)["failed"] == 0
  result = _stage(wd, runner.read_runs(wd)[0])
  serving = runner.read_runs(wd)[0]["serving"]  # what the served model costs, in the run index
  assert serving["params"] == result["param_count"] and serving["eval_users_per_second"] > 0
  assert set(result["domains"]) == {"target", "source"}
  assert result["domains"]["target"]["test"]["ndcg@10"] == result["test"]["ndcg@10"]
  assert result["domains"]["source"]["population_users"] == 120 and 0 <= result["domains"]["source"]["test"]["ndcg@10"] <= 1
  single = tiny_config(data_dir)  # no second domain: a clear error
  single.transfer.strategy = "multi_domain"
  single.train.init_from = os.path.join(wd, "stages", runner.read_runs(wd)[0]["stages"]["pretrain"])
  with pytest.raises(ValueError, match=r"reads the stream\(s\) \['source'\].*data.source_domain"):
    train_and_evaluate(single, str(tmp_path / "single"))


def test_a_pretraining_below_the_floor_fails_its_transfer_cells_and_the_rest_still_run(data_dir, tmp_path):
  wd = str(tmp_path / "floor")
  c = _config(data_dir)
  c.experiment.strategies = ("scratch", "zero_shot")
  c.experiment.min_pretrain_valid = 0.99  # no 2-epoch tiny model reaches it
  counts = runner.run_study(c, runner.implicit_study(c), wd)
  assert counts["failed"] == 1  # zero_shot; scratch loads nothing and runs
  runs = {r["overrides"]["transfer.strategy"]: r for r in runner.read_runs(wd)}
  assert runs["scratch"]["status"] == "done" and runs["zero_shot"]["status"] == "failed"
  assert "below experiment.min_pretrain_valid=0.99" in runs["zero_shot"]["error"]
  assert "give it a budget that converges" in runs["zero_shot"]["error"]
  # the same pretraining passes a floor under what it reached (the stage is reused, not retrained)
  pre = json.load(open(os.path.join(wd, "stages", runs["zero_shot"]["planned"][0], "results.json")))
  c.experiment.min_pretrain_valid = pre["valid"]["ndcg@10"] * 0.9
  runner.run_study(c, runner.implicit_study(c), wd)
  runs = {r["overrides"]["transfer.strategy"]: r for r in runner.read_runs(wd)}
  assert runs["zero_shot"]["status"] == "done" and "pretrain" in runs["zero_shot"]["reused"]


def test_a_renamed_field_keeps_stage_hashes_and_stored_study_configs(tmp_path):
  """data.files.keys became data.files.key_scope (experiment.RENAMED_FIELDS): stages computed and
  studies started under the old name keep their hashes and go on under the new one."""
  import ml_collections
  from xrec.defaults import base_config
  config = base_config()
  tree = json.loads(json.dumps(config.to_dict()))
  for files in (tree["data"]["files"], tree["data"]["scenario"]["target_files"]):
    files["keys"] = files.pop("key_scope")
  assert experiment.stage_hash(ml_collections.ConfigDict(tree)) == experiment.stage_hash(config)
  with open(tmp_path / "study.json", "w") as f:
    json.dump({"config": tree}, f)
  runner.check_same_config(str(tmp_path), config)  # the old name reads as the new one: no conflict
  config.data.files.key_scope = "shared"  # a real change is still one
  with pytest.raises(runner.ConfigConflict, match=r"data.files.key_scope: 'auto' -> 'shared'"):
    runner.check_same_config(str(tmp_path), config)


def test_a_study_refuses_before_any_work_what_its_cells_would_fail_on_after_pretraining(data_dir, tmp_path):
  """A strategy whose terms the encoder cannot train (distill's next-item terms on BERT4Rec) and
  early evaluations beyond the target's budget are errors of the launch, not of the cell after its
  pretraining has run."""
  c = _config(data_dir)
  c.model.name = "bert4rec"
  c.experiment.strategies = ("distill",)
  with pytest.raises(ValueError, match=r"cell 0 .*transfer.strategy='distill' does not apply to this encoder"):
    runner.check_study(c, runner.implicit_study(c))
  c.model.name = "sasrec"  # on a causal encoder it applies, hidden-state matching included (its teacher's
  c.transfer.distill.hidden_weight = 0.5  # width is set by the trainer from the teacher run)
  runner.check_study(c, runner.implicit_study(c))
  c = _config(data_dir)
  c.train.eval_at_steps = (2, 9)
  with pytest.raises(ValueError, match=r"train.eval_at_steps=\(2, 9\) has steps beyond the budget of 4 steps \(\[9\]\)"):
    runner.check_study(c, runner.implicit_study(c))
  assert not os.path.exists(tmp_path / "stages")

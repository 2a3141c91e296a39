"""metrics.jsonl rows carry a wall-clock stamp (time-to-quality curves read it), and a resume keeps
only the rows up to the resumed step."""

import json

from xrec.train.writer import MetricWriter


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_rows_are_stamped_in_order_and_a_resume_drops_the_rows_after_its_step(tmp_path):
  w = MetricWriter(str(tmp_path), enabled=True)
  for step in (0, 5, 10):
    w.write(step, "valid", {"ndcg@10": 0.1 * step})
  w.close()
  rows = _rows(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [0, 5, 10]
  assert all(isinstance(r["time"], float) and r["time"] > 1.7e9 for r in rows)
  assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
  MetricWriter(str(tmp_path), resume_step=5, enabled=True).close()
  assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [0, 5]

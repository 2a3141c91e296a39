"""python -m xrec.report WORKDIR [--out DIR] [--alpha P]: a study's tables and plots."""

import argparse
import sys

from xrec.report import write_report
from xrec.report.tables import ALPHA


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xrec.report", description=__doc__)
  parser.add_argument("workdir", help="the study directory (launch.py --workdir of a config with sweep())")
  parser.add_argument("--out", default=None, help="output folder (default WORKDIR/report)")
  parser.add_argument("--alpha", type=float, default=ALPHA, help="two-sided p threshold of the markers")
  args = parser.parse_args(argv)
  if not 0.0 < args.alpha < 1.0:
    parser.error(f"--alpha={args.alpha} must be in (0, 1)")
  try:
    out = write_report(args.workdir, args.out, args.alpha)
  except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as e:
    print(f"xrec: error: {e}", file=sys.stderr)  # a user error: one line, like launch.py
    return 2
  print(out["markdown"])
  print("wrote:\n  " + "\n  ".join(out["files"]), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Compare runs: python scripts/compare_runs.py RUN_OR_MULTIRUN_DIR... [--output DIR]."""
import argparse

from segkit.analysis.compare import compare_runs

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories, or a multirun directory holding them")
    parser.add_argument("--output", default="comparison", help="where comparison.md/.png/.json go")
    args = parser.parse_args()
    compare_runs(args.runs, args.output)

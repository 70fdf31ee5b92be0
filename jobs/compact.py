"""Compact a finished run's tables: its many small parts (one per shard) rewritten as a few large
Parquet files, every row kept exactly once (what Spark and Athena want at scale).

Examples:
  python jobs/compact.py --output out/ --run-id nightly-2026-11-25
  python jobs/compact.py --output s3://bucket/asr-out --run-id batch-7 --target-mb 512

For transcripts, words and windows (the WER tables are one file per run already): the run's
partition <table>/run_id=<id>/ is rewritten as part-compact-<digest>-<n>.parquet files of about
--target-mb (row groups of about --row-group-mb), each written atomically; the row counts are
checked, runs/<id>/compacted.json records what was replaced, then the old parts are removed. It
runs under the run's lock (a run still writing holds it: exit 2). Interrupted, run it again: it
redoes or finishes its work. A compacted run cannot be resumed by jobs/transcribe.py (use a new
--run-id); the WER report and every engine read it as before. Readers that list the partition
during the last step may see rows twice: compact a run nobody reads at that moment.

Exit status: 0 done (or nothing to do); 2 bad input (no such run, an invalid run id, the run is
being written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import INPUT_ERRORS, add_s3_options, start_job  # noqa: E402
from pipeline.output.compact import COMPACTED_TABLES  # noqa: E402
from pipeline.output.paths import RunPaths  # noqa: E402
from pipeline.run.compact import compact_run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/compact.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--output", required=True, help="the --output of the run (local or s3://)")
    p.add_argument("--run-id", required=True, help="the run to compact")
    p.add_argument("--target-mb", type=float, default=256.0, help="size of each new file, about (default 256)")
    p.add_argument("--row-group-mb", type=float, default=128.0,
                   help="uncompressed size of each row group, about (default 128)")
    p.add_argument("--tables", default=",".join(COMPACTED_TABLES),
                   help=f"tables to compact (default {','.join(COMPACTED_TABLES)})")
    add_s3_options(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_job(args)
    try:
        tables = tuple(t for t in args.tables.split(",") if t)
        unknown = [t for t in tables if t not in COMPACTED_TABLES]
        if unknown or args.target_mb <= 0 or args.row_group_mb <= 0:
            raise ValueError(f"--tables must be among {', '.join(COMPACTED_TABLES)} and sizes > 0 (got {args.tables})")
        paths = RunPaths(args.output, args.run_id)
        results = compact_run(paths, target_bytes=int(args.target_mb * (1 << 20)),
                              row_group_bytes=int(args.row_group_mb * (1 << 20)), tables=tables)
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not results:
        print(f"run {args.run_id} was compacted before; nothing to do")
    for r in results:
        print(f"{r.table}: {r.parts_before} part(s), {r.bytes_before / 1e6:.1f} MB -> {r.files_after} file(s), "
              f"{r.bytes_after / 1e6:.1f} MB, {r.rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())

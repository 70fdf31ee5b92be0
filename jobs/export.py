"""Subtitles (SRT, WebVTT) or JSON transcripts, one file per recording, from a run's words table.

Examples:
  python jobs/export.py --run out/ --run-id 20261201T120000Z-1a2b3c --format srt --out subs/
  python jobs/export.py --run s3://b/asr --run-id nightly --format vtt --out s3://b/asr/vtt/ --decoding ctc-greedy

What it reads: <run>/words/run_id=<id>/part-*.parquet, one row per word (written by
jobs/transcribe.py beside the transcripts; columns cut_id, recording_id, channel, speaker,
word_index, word, start, end (seconds in the recording), confidence, decoding). The words are
streamed sorted by recording and time (DuckDB, bounded memory), so runs of any size export.

What it writes: <out>/<recording>.<srt|vtt|json>, one per recording (<recording>.ch<N>.<ext>
for channels other than 0; characters other than letters, digits, '.', '_', '-' in a recording
id become '_', and such an id, or one longer than 200 bytes, is shortened and followed by a hash
of the id: no recording id leads outside --out). The run id is checked as jobs/transcribe.py
checks it (no '/', no '..'). Cues hold at most --max-chars characters and
--max-seconds seconds, and break at pauses of --min-pause seconds or more and between cuts.
JSON files hold the same cues as segments, each with its words, times and confidences.

A run transcribed with several --decoding methods needs --decoding here (a method name, e.g.
ctc-greedy, or a full label as in the rows' 'decoding' column).

Exit status: 0 written; 2 bad input (no such run, no words, an ambiguous or unknown decoding).
S3: the standard AWS chain or the --s3-* flags, as for jobs/transcribe.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import INPUT_ERRORS, add_s3_options, start_job  # noqa: E402
from pipeline.report.subtitles import FORMATS, CueRules, export_run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--run", required=True, metavar="OUTPUT", help="the --output of the transcription run (local or s3://)")
    p.add_argument("--run-id", required=True, help="the run's id")
    p.add_argument("--format", required=True, choices=FORMATS, help="srt, vtt or json")
    p.add_argument("--out", required=True, metavar="DIR", help="where the files go (local or s3://)")
    p.add_argument("--decoding", default=None, help="which decoding's words (needed when the run has several)")
    d = CueRules()
    p.add_argument("--max-chars", type=int, default=d.max_chars, help=f"characters per cue at most (default {d.max_chars})")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help=f"seconds per cue at most (default {d.max_seconds:g})")
    p.add_argument("--min-pause", type=float, default=d.min_pause,
                   help=f"a gap between words of at least this many seconds starts a new cue (default {d.min_pause:g})")
    add_s3_options(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_job(args)
    try:
        rules = CueRules(max_chars=args.max_chars, max_seconds=args.max_seconds, min_pause=args.min_pause)
        summary = export_run(args.run, args.run_id, args.format, args.out, decoding=args.decoding, rules=rules)
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.recordings} {args.format} file(s), {summary.cues} cues, {summary.words} words -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

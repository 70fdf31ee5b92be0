#!/usr/bin/env python
"""Inspect a model directory before a long run: what loads, which weights, does the tokenizer fit.

  python jobs/inspect_model.py model/assets/demo
  python jobs/inspect_model.py ~/icefall-asr-librispeech-zipformer-2023-05-15          # a Hugging Face repo root
  python jobs/inspect_model.py ~/icefall/egs/librispeech/ASR/zipformer/exp --epoch 30 --avg 9 --use-averaged-model
  python jobs/inspect_model.py s3://bucket/models/zf-m --json

The directory is loaded exactly as jobs/transcribe.py and jobs/evaluate.py load it (same
layouts, weights options and checks; an s3:// directory is fetched the same way), and the
report says:
  - layout (flat folder, icefall repo root, exp/ folder) and the files used, with SHA-256;
  - checkpoint kind (pretrained or training checkpoint, its epoch / batch_idx_train) and the
    weights used (one file's model or model_avg, a mean of epochs, or icefall's averaged model);
  - architecture: from config.json or inferred from the tensors' shapes, and which fields were
    guessed by icefall's conventions rather than read from shapes;
  - parameters per part; heads and the decoding methods they allow (auto picks the best);
  - vocabulary: model vs tokenizer size ('#0' disambiguation lines ignored) and special ids;
  - causality: streaming-trained or not, the config's chunk lists, the chunking decoding uses.

Exit status: 0 the model loads and fits its tokenizer; 2 it does not (one line on stderr
saying why, naming the files). --json prints the report as one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import ModelLoadError  # noqa: E402
from model.inspection import format_report, inspect_model  # noqa: E402
from pipeline.cli import add_model_options, add_s3_options, apply_s3_options, model_choice  # noqa: E402
from pipeline.io.model_store import local_model_dir  # noqa: E402
from pipeline.io.storage import StorageError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="DIR", help="model directory, local or s3://")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_model_options(p)
    add_s3_options(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    apply_s3_options(args)
    try:
        weights, decoding = model_choice(args)
        report = inspect_model(local_model_dir(args.model, weights=weights), weights=weights, decoding=decoding)
    except (ModelLoadError, StorageError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["model_dir"] = args.model
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a model directory to ONNX: files sherpa-onnx runs, and zipscribe's onnxruntime backend.

  python jobs/export_onnx.py --model model/assets/demo --out exp-onnx/
  python jobs/export_onnx.py --model ~/icefall-asr-librispeech-zipformer-2023-05-15 --out zf-onnx/ --heads transducer --int8
  python jobs/export_onnx.py --model s3://bucket/models/zf-m --out zf-m-onnx/ --sherpa-only

--model is read exactly as jobs/transcribe.py reads it (flat folder, icefall / Hugging Face repo
root or exp/ folder, local or s3://, icefall's --epoch/--iter/--avg/--use-averaged-model). --out
receives:

  sherpa-onnx (unless --backend-only)
    CTC head         model.onnx + tokens.txt
                     sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model="model.onnx", tokens="tokens.txt")
    transducer       encoder.onnx, decoder.onnx, joiner.onnx + tokens.txt
                     sherpa_onnx.OfflineRecognizer.from_transducer(encoder=, decoder=, joiner=, tokens=)
  zipscribe's onnxruntime backend (unless --sherpa-only)
    zipscribe_encoder.onnx (the encoder without heads), ctc_output.onnx, attention_decoder.onnx,
    joiner_encoder_proj.onnx (+ decoder.onnx, joiner.onnx): model.onnx_runtime.load_onnx_model(DIR)
  zipscribe_onnx.json    what was exported: heads, files, the checkpoint's SHA-256, int8, opset

--heads ctc exports the CTC head (and the attention decoder, which rescores its n-best, when the
model has one); --heads transducer the transducer; --heads all (default) every head the model has.
--int8 also writes *.int8.onnx copies with int8 MatMul weights (onnxruntime dynamic quantisation),
the names sherpa-onnx's published models use. Dynamic batch and time axes, opset 17. Streaming
(causal) models are not supported yet.

Exit status: 0 exported; 2 the model does not load or cannot be exported as asked ("error: ..."
on stderr saying why and naming the files, no traceback: one line for a missing directory, a
missing head or a causal model; a checkpoint that does not fit its config lists the mismatches).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import ModelLoadError  # noqa: E402
from model.onnx_export import HEADS, OnnxExportError, export_onnx  # noqa: E402
from pipeline.cli import add_model_options, add_s3_options, apply_s3_options, model_choice  # noqa: E402
from pipeline.io.model_store import local_model_dir  # noqa: E402
from pipeline.io.storage import StorageError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="model directory, local or s3://")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created; same-named files replaced)")
    p.add_argument("--heads", choices=HEADS, default="all",
                   help="ctc (+ the attention decoder), transducer, or all heads the model has (default all)")
    p.add_argument("--int8", action="store_true", help="also write *.int8.onnx copies (int8 MatMul weights)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sherpa-only", action="store_true", help="only the files sherpa-onnx loads")
    group.add_argument("--backend-only", action="store_true", help="only zipscribe's onnxruntime backend graphs")
    add_model_options(p)
    add_s3_options(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export; returns the exit status."""
    args = build_parser().parse_args(argv)
    apply_s3_options(args)
    from model.recognizer import Recognizer

    try:
        weights, decoding = model_choice(args)
        rec = Recognizer.from_dir(local_model_dir(args.model, weights=weights), weights=weights,
                                  decoding=decoding or None)
        result = export_onnx(rec.model, rec.tokenizer, args.out, heads=args.heads, int8=args.int8,
                             sherpa=not args.backend_only, backend=not args.sherpa_only,
                             checkpoint_sha256=rec.info.sha256)
    except (ModelLoadError, OnnxExportError, StorageError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = sorted(p.name for p in Path(result.directory).iterdir() if p.is_file())
    print(f"exported {rec.info.name} (sha256 {rec.info.sha256[:12]}) heads {', '.join(result.heads)} "
          f"{'fp32 + int8' if result.int8 else 'fp32'} in {result.seconds:.1f} s to {result.directory}:")
    for name in names:
        print(f"  {name:32s} {(Path(result.directory) / name).stat().st_size / 1e6:8.2f} MB")
    files = result.files.get("sherpa", {})
    if "ctc" in files:
        print(f"sherpa-onnx CTC: OfflineRecognizer.from_zipformer_ctc(model={json.dumps(str(result.path('sherpa', 'ctc')))}, "
              f"tokens={json.dumps(str(result.path('sherpa', 'tokens')))})")
    if "encoder" in files:
        print("sherpa-onnx transducer: OfflineRecognizer.from_transducer(" + ", ".join(
            f"{r}={json.dumps(str(result.path('sherpa', r)))}" for r in ("encoder", "decoder", "joiner", "tokens")) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())

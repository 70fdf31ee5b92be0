"""Model speed: audio seconds per wall second of ``forward_encoder`` + CTC head.

Shapes: the golden-fixture model and icefall's medium shape (random weights),
batch 8 x 10 s by default, one warm-up then the median of ``--runs`` runs.
On CUDA, also fp32 vs bf16 autocast. Prints one JSON object.

    python bench/model_speed.py                      # CPU, 2 threads
    python bench/model_speed.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import AsrModel, preset  # noqa: E402

FRAMES_PER_SECOND = 100
FIXTURE_CONFIG = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "zipformer_ref" / "config.json"


def build(shape: str) -> AsrModel:
    torch.manual_seed(0)
    if shape == "fixture":
        cfg = json.loads(FIXTURE_CONFIG.read_text())
    else:
        cfg = preset(shape)
        cfg.update(use_ctc=True)
    return AsrModel(**cfg).eval()


def time_model(model: AsrModel, batch: int, seconds: float, runs: int, device: str, dtype: torch.dtype | None) -> dict:
    frames = int(seconds * FRAMES_PER_SECOND)
    x = torch.randn(batch, frames, 80, device=device)
    x_lens = torch.full((batch,), frames, dtype=torch.int64, device=device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)

    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            out, out_lens = model.forward_encoder(x, x_lens)
            model.ctc_output(out)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()  # warm-up
    times = [once() for _ in range(runs)]
    median = statistics.median(times)
    return {
        "batch": batch,
        "seconds_per_utt": seconds,
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "rtfx": round(batch * seconds / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shapes", default="fixture,medium-transducer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    dtypes = [None, torch.bfloat16] if args.device.startswith("cuda") else [None]
    for shape in args.shapes.split(","):
        model = build(shape).to(args.device)
        params = sum(p.numel() for p in model.encoder.parameters()) + sum(p.numel() for p in model.encoder_embed.parameters())
        for dtype in dtypes:
            r = time_model(model, args.batch, args.seconds, args.runs, args.device, dtype)
            results.append({"shape": shape, "encoder_params_m": round(params / 1e6, 2), **r})
    print(json.dumps({"device": args.device, "threads": args.threads, "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()

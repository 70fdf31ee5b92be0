"""The GPU check: the shipped decoding's model stage, its search's host syncs, model throughput by
shape, precision and batch size, decoding's share of the encoder's time, and one end-to-end job on
one Ray GPU actor, as one table (not a test).

Run it through ``bench/gpu_suite.sh`` (which runs the CUDA tests first, and this whatever they
say) on a machine with a CUDA GPU; ``--device cpu --quick`` runs the same code paths on the CPU in
a few minutes (the test suite does, so this script cannot rot). Needs nothing from outside the
machine: audio is synthesised with espeak-ng and models are random-weight icefall shapes with
calibrated CTC heads (``bench/pipeline_overhead.py``'s builders), so decoding sees
trained-model-like posteriors. Sections, in order (later ones give way to ``--time-budget``):

1. **Shipped decoding, model stage**: the medium shape (``--quick``: small) with the demo model's
   decoding (``model/assets/demo/config.json``: attention rescoring, beam 32, the word LM fused in
   the search and in rescoring, 6 s segments) and its LM, run as a job's actor runs it
   (:class:`pipeline.run.transcriber.Transcriber`: batch budget from the memory probe, the next
   batch's features prepared while one runs) over shards of synthetic speech, ``--stage-passes``
   times: audio seconds per second of the model thread, the stage times from CUDA events, the
   budget and the precision actually used, GPU utilisation, and the writer's time per shard (WER
   scoring and Parquet, on its own thread in a job). Against the target of 5,000x on an H100.
2. **Host syncs in the search**: the fused-LM prefix search (beam 32) on the GPU over a batch of
   <= 6 s utterances' CTC posteriors, once under ``torch.cuda.set_sync_debug_mode("warn")``: every
   synchronizing call is counted; any inside the search fails the suite (exit status 1). Those of
   the whole ``decode`` (rescoring reads its n-best back by design) are reported.
3. **End to end**: ``jobs/transcribe.py`` with the shipped decoding on ``--e2e-minutes`` of
   synthetic speech with one model actor (``--gpus-per-actor 1`` on CUDA, batch budget automatic),
   against section 1's model stage; GPU utilisation sampled with ``nvidia-smi`` while it runs.
4. **Throughput**: for each shape (``medium``, ``large``; ``--quick``: ``small``) and precision
   (fp32, bf16, fp16 autocast), ``Recognizer.transcribe`` on batches of 10 s utterances (``--quick``:
   2 s) at batch sizes 8 .. 256 (``--quick``: 2, 4), one warm-up then the median of ``--runs``;
   audio seconds per second, stage shares, peak memory, and the precision each row really ran in
   (fp16 falls back to fp32 for good when it overflows: model/precision.py). A batch that runs out
   of memory is reported as ``OOM`` and ends that precision's sweep.
5. **Decoding**: each method the model allows, its time as a share of the encoder's, at the
   middle batch size in the default precision.

Prints a text table on stdout and writes the numbers as JSON to ``--json`` (default
``<workdir>/gpu_suite.json``). Exit status 1 when the search synced with the host or a section
failed (its error is in the table and the JSON), else 0.

    bench/gpu_suite.sh                       # on a CUDA machine: tests + this, one call
    python bench/gpu_suite.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pipeline_overhead as po  # noqa: E402
from model.decoding import DecodingConfig, available_methods, ctc_prefix_beam_search, decode  # noqa: E402
from model.precision import resolve_precision  # noqa: E402
from model.recognizer import Recognizer, StageTimes  # noqa: E402
from pipeline.inputs.manifests import iter_work_items  # noqa: E402
from pipeline.io.ranges import RangeReader  # noqa: E402
from pipeline.plan.shards import make_shards  # noqa: E402
from pipeline.run.shard_audio import load_shard_audio  # noqa: E402
from pipeline.run.tasks import StageSettings, shard_task  # noqa: E402
from pipeline.run.transcriber import ActorConfig, Transcriber  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")
DEMO = REPO / "model" / "assets" / "demo"
#: the issue's goal for the model stage of the shipped decoding, medium shape, on an H100
TARGET_RTFX = 5000.0


def log(message: str) -> None:
    print(f"[gpu_suite] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """The suite's time budget: sections ask whether there is time left for more."""

    def __init__(self, budget: Optional[float]) -> None:
        self.started, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self, reserve: float = 0.0) -> bool:
        return self.budget is None or self.elapsed() + reserve < self.budget


def timed(rec: Recognizer, waves: list[np.ndarray], runs: int) -> tuple[float, StageTimes]:
    """Median seconds of ``rec.transcribe(waves)`` after one warm-up, and the stage times of that run."""
    rec.transcribe(waves)
    results = []
    for _ in range(runs):
        sync(rec.device)
        start = time.perf_counter()
        _, stages = rec.transcribe(waves)
        sync(rec.device)
        results.append((time.perf_counter() - start, stages))
    results.sort(key=lambda r: r[0])
    return results[len(results) // 2]


def throughput(model_dir: Path, device: torch.device, batch_sizes: Sequence[int], seconds: float,
               runs: int, clock: Clock) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for precision in PRECISIONS:
        rec = Recognizer.from_dir(model_dir, device=device, amp_dtype=precision, rescoring_dtype=precision)
        for n in batch_sizes:
            if not clock.left():
                rows.append({"precision": precision, "batch": n, "skipped": "time budget"})
                continue
            waves = [(0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(n)]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                wall, stages = timed(rec, waves, runs)
            except torch.OutOfMemoryError:
                rows.append({"precision": precision, "batch": n, "oom": True})
                log(f"{model_dir.name} {precision} batch {n}: out of memory")
                break
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            s = stages.as_dict()
            # what the row really ran in: fp16 falls back to fp32 for good after an overflow
            rows.append({"precision": precision, "used": rec.precision.name, "reason": rec.precision.reason,
                         "batch": n, "audio_s_per_s": round(n * seconds / wall, 1), "peak_gib": peak and round(peak, 2),
                         "shares": {k: round(v / wall, 3) for k, v in s.items()}})
            log(f"{model_dir.name} {precision} (ran {rec.precision.name}) batch {n}: {n * seconds / wall:.1f} audio-s/s")
        del rec
    return rows


def decoding_shares(model_dir: Path, device: torch.device, batch: int, seconds: float,
                    runs: int, speech: list[np.ndarray], clock: Clock) -> list[dict[str, Any]]:
    """Each method's decoding time as a share of the encoder's, on synthetic speech."""
    waves = [speech[i % len(speech)][: int(seconds * 16000)] for i in range(batch)]
    probe = Recognizer.from_dir(model_dir, device=device)
    rows = []
    for method in available_methods(probe.model):
        if not clock.left():
            rows.append({"method": method, "skipped": "time budget"})
            continue
        rec = Recognizer.from_dir(model_dir, device=device, decoding=DecodingConfig(method=method))
        _, stages = timed(rec, waves, runs)
        rows.append({"method": method, "decoding_over_encoder": round(stages.decoding / stages.encoder, 3),
                     "encoder_s": round(stages.encoder, 4), "decoding_s": round(stages.decoding, 4)})
        log(f"decoding {method}: {stages.decoding / stages.encoder:.2f} x encoder")
    return rows


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every half second while the block runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.samples, self._stop = enabled and shutil.which("nvidia-smi") is not None, [], threading.Event()

    def __enter__(self) -> "GpuSampler":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                util, mem = out.stdout.splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def report(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        utils = [u for u, _ in self.samples]
        return {"gpu_util_mean": round(statistics.mean(utils), 1), "gpu_util_max": max(utils),
                "gpu_mem_max_mib": max(m for _, m in self.samples), "samples": len(utils)}


def shipped_model_dir(workdir: Path, base: Path) -> Path:
    """``base``'s weights and tokenizer with the demo model's decoding (its config.json ``decoding``
    section) and its word LM: the shipped decoding on a model of ``base``'s shape."""
    directory = workdir / f"{base.name}-shipped-decoding"
    if (directory / "config.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((base / "config.json").read_text())
    config["name"] = f"{config.get('name', base.name)}+demo-decoding"
    config["decoding"] = json.loads((DEMO / "config.json").read_text())["decoding"]
    for f in base.iterdir():
        if f.is_file() and f.name not in ("config.json", "bench-model.json"):
            shutil.copy2(f, directory / f.name)
    shutil.copy2(DEMO / "lm.arpa.gz", directory / "lm.arpa.gz")
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def model_stage(args: argparse.Namespace, model_dir: Path, audio_dir: Path, device: torch.device) -> dict[str, Any]:
    """The shipped decoding as a job's model actor runs it: :meth:`Transcriber.decode_shard` over the
    shards of ``audio_dir`` (audio loaded up front), ``args.stage_passes`` times after one warm-up
    shard; the writer's work timed apart."""
    transcriber = Transcriber(ActorConfig(model_uri=str(model_dir), model_sha256="", output_uri=str(args.workdir),
                                          run_id="suite", device=device.type, max_batch_seconds=args.stage_batch_seconds,
                                          num_threads=torch.get_num_threads()))
    settings = StageSettings(run_id="suite", output=str(args.workdir / "stage-output"), fingerprint_parts=("suite",))
    reader = RangeReader()
    shards = [(shard_task(shard, settings), load_shard_audio(shard.items, reader, 8))
              for shard in make_shards(iter_work_items(str(audio_dir)), args.stage_shard_size)]
    audio = sum(sum(d or 0.0 for d in a.durations) for _, a in shards)
    transcriber.decode_shard(*shards[0])  # warm-up: the first real shapes
    times, decoded = StageTimes(), []
    sync(device)
    with GpuSampler(device.type == "cuda") as sampler:
        started = time.perf_counter()
        for _ in range(args.stage_passes):
            for task, shard_audio in shards:
                d = transcriber.decode_shard(task, shard_audio)
                times.add(StageTimes(**d.result.stage_seconds))
                decoded.append(d)
        sync(device)
        wall = time.perf_counter() - started
    written = time.perf_counter()
    for d in decoded[: len(shards)]:
        transcriber.write_shard(d)
    write = (time.perf_counter() - written) / len(shards)
    stages = times.as_dict()
    precision = transcriber.recognizer.precision
    total = audio * args.stage_passes
    row = {"model": model_dir.name, "decoding": transcriber.decoding_labels()[0], "audio_seconds": round(total, 1),
           "shards": len(shards) * args.stage_passes, "batches": sum(d.result.batches for d in decoded),
           "rtfx": round(total / wall, 1), "wall_seconds": round(wall, 3),
           "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
           "stage_shares": {k: round(v / wall, 3) for k, v in stages.items()},
           "padding_ratio": round(1 - sum(d.result.model_input_seconds for d in decoded)
                                  / max(1e-9, sum(d.result.padded_seconds for d in decoded)), 3),
           "batch_budget_seconds": round(transcriber.max_batch_seconds, 1), "oom_splits": transcriber.oom_splits,
           "precision": f"{precision.name} ({precision.reason})", "write_seconds_per_shard": round(write, 3),
           "model_seconds_per_shard": round(wall / len(decoded), 3),
           "timing": "CUDA events" if device.type == "cuda" else "host clock", **sampler.report()}
    log(f"shipped decoding, model stage: {row['rtfx']} x real time ({row['decoding']}; budget "
        f"{row['batch_budget_seconds']} padded s; {row['precision']})")
    return row


def search_syncs(model_dir: Path, speech: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    """Synchronizing calls (``torch.cuda.set_sync_debug_mode("warn")``) in one fused-LM prefix
    search over a batch of <= 6 s utterances, and in the whole ``decode`` of that batch."""
    if device.type != "cuda":
        return {"search": None, "decode": None, "note": "CUDA only"}
    rec = Recognizer.from_dir(model_dir, device=device)
    cfg = rec.decoding
    waves = [w for w in speech if w.size <= 6 * 16000][:32] or [w[: 6 * 16000] for w in speech[:32]]
    def autocast(dtype: Optional[torch.dtype]) -> Any:
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    with torch.inference_mode():
        feats, feat_lens = rec.features(waves, device=device)
        with autocast(rec.amp_dtype):
            enc, enc_lens = rec.model.forward_encoder(feats, feat_lens)
        enc = enc.float()
        with autocast(rec.rescoring_dtype):
            log_probs = rec.model.ctc_output(enc)
        ctc_prefix_beam_search(log_probs, enc_lens, beam=cfg.beam, lm=rec.search_lm, lm_scale=cfg.search_lm_scale,
                               word_bonus=cfg.word_bonus)  # warm: lazy tables and kernels outside the count
        sync(device)

        def count(work: Callable[[], Any]) -> tuple[int, list[str]]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    work()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            where = sorted({f"{Path(w.filename).relative_to(REPO) if w.filename.startswith(str(REPO)) else w.filename}"
                            f":{w.lineno}" for w in syncs})
            return len(syncs), where

        search, search_where = count(lambda: ctc_prefix_beam_search(
            log_probs, enc_lens, beam=cfg.beam, lm=rec.search_lm, lm_scale=cfg.search_lm_scale, word_bonus=cfg.word_bonus))
        sync(device)
        whole, _ = count(lambda: decode(rec.model, enc, enc_lens, cfg, ctc_log_probs=log_probs, lm_scorer=rec.lm_scores,
                                        search_lm=rec.search_lm))
    frames = int(enc_lens.max())
    log(f"host syncs: {search} in the fused search ({frames} frames, beam {cfg.beam}), {whole} in the whole decode")
    return {"search": search, "search_where": search_where[:20], "decode": whole, "frames": frames,
            "utterances": len(waves), "beam": cfg.beam}


def end_to_end(args: argparse.Namespace, model_dir: Path, audio_dir: Path, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":  # the earlier sections' models and cached blocks: the job's actor probes the free memory
        gc.collect()
        torch.cuda.empty_cache()
    job_args = argparse.Namespace(max_batch_seconds=args.e2e_batch_seconds, shard_size=args.shard_size,
                                  max_batch_size=None, decoding="auto", job_timeout=args.job_timeout,
                                  keep_output=False, gpus_per_actor=1 if device.type == "cuda" else 0)
    with GpuSampler(device.type == "cuda") as sampler:
        run = po.end_to_end(job_args, audio_dir, model_dir, args.workdir)
    s = run["summary"]
    return {"audio_seconds": round(float(s["audio_seconds"]), 1), "e2e_rtfx_steady": round(run["rtfx_steady"], 1),
            "e2e_rtfx_with_startup": round(s["rtfx"], 1), "job_model_rtfx": round(s["model_rtfx"], 1),
            "first_part_seconds": round(run["first_part_seconds"], 1), "devices": s["devices"],
            "precision": s.get("precision"), "oom_splits": s.get("oom_splits"),
            "batch_budget_seconds": s.get("batch_budget_seconds"), "decoding": s.get("decoding"),
            "stage_seconds": {k: round(v, 2) for k, v in s.get("stage_seconds", {}).items()}, **sampler.report()}


def section(into: dict[str, Any], name: str, work: Callable[[], Any], failures: list[str]) -> None:
    """``into[name] = work()``; a failure is recorded in ``into[name]`` and ``failures`` (it fails the
    suite) instead of ending it."""
    try:
        into[name] = work()
    except Exception as exc:  # noqa: BLE001 - the other sections still run; the exit status says so
        log(f"section {name} failed: {type(exc).__name__}: {exc}")
        into[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def table(report: dict[str, Any]) -> str:
    lines = [f"device: {report['device_name']}  ({report['device']}, torch {report['torch']})", ""]
    st = report.get("model_stage", {})
    if "error" in st or not st:
        lines.append(f"shipped decoding, model stage: {st.get('error', 'not run')}")
    else:
        sh = st["stage_shares"]
        verdict = ("" if report["device"] != "cuda" else
                   f"  [target {TARGET_RTFX:g}x on an H100: {'met' if st['rtfx'] >= TARGET_RTFX else 'NOT met'}]")
        lines += [f"shipped decoding, model stage ({st['model']}, {st['decoding']}):",
                  f"  {st['rtfx']} x real time over {st['audio_seconds']} s in {st['shards']} shards / {st['batches']} "
                  f"batches{verdict}",
                  f"  stages ({st['timing']}): features {sh['features']:.2f}, encoder {sh['encoder']:.2f}, decoding "
                  f"{sh['decoding']:.2f} of the model thread's time; padding {st['padding_ratio']:.3f}",
                  f"  batch budget {st['batch_budget_seconds']} padded s ({st['oom_splits']} OOM splits); precision "
                  f"{st['precision']}",
                  f"  writer: {st['write_seconds_per_shard']} s per shard against the model's "
                  f"{st['model_seconds_per_shard']} s (its own thread in a job)"
                  + (f"; GPU utilisation mean {st['gpu_util_mean']} % (max {st['gpu_util_max']} %)"
                     if "gpu_util_mean" in st else "")]
    sy = report.get("syncs", {})
    if "error" in sy:
        lines.append(f"host syncs: {sy['error']}")
    elif sy.get("search") is None:
        lines.append(f"host syncs: {sy.get('note', 'not measured')}")
    else:
        lines.append(f"host syncs: {sy['search']} inside the fused search ({sy['utterances']} utterances, {sy['frames']} "
                     f"frames, beam {sy['beam']}){' FAIL' if sy['search'] else ''}; {sy['decode']} in the whole decode"
                     + (f"; at {', '.join(sy['search_where'][:6])}" if sy["search_where"] else ""))
    e = report.get("end_to_end", {})
    if "error" in e or not e:
        lines.append(f"end to end: {e.get('error', 'not run')}")
    else:
        ratio = (f" = {e['e2e_rtfx_steady'] / st['rtfx']:.2f} of the model stage" if st.get("rtfx") else "")
        lines += ["", f"end to end: {e['audio_seconds']} s of audio on {', '.join(e['devices'])}: "
                  f"RTFx {e['e2e_rtfx_steady']} steady{ratio} ({e['e2e_rtfx_with_startup']} with start-up; the job's "
                  f"own model RTFx {e['job_model_rtfx']}); first part after {e['first_part_seconds']} s; precision "
                  f"{e['precision']}; batch budget {e['batch_budget_seconds']}"
                  + (f"; GPU utilisation mean {e['gpu_util_mean']} % (max {e['gpu_util_max']} %), "
                     f"memory max {e['gpu_mem_max_mib']:.0f} MiB" if "gpu_util_mean" in e else "")]
    lines += ["", "throughput (audio seconds per second; stage shares of the batch's wall time; peak GiB; the "
              "precision run: fp16 -> fp32 after an overflow)",
              f"{'shape':8} {'prec':5} {'ran':5} {'batch':>5} {'audio-s/s':>10} {'feat':>5} {'enc':>5} {'dec':>5} {'peak':>6}"]
    for shape, rows in report.get("throughput", {}).items():
        if isinstance(rows, dict):  # the section failed
            lines.append(f"{shape:8} {rows.get('error', '')}")
            continue
        for r in rows:
            if r.get("oom") or r.get("skipped"):
                lines.append(f"{shape:8} {r['precision']:5} {'':5} {r['batch']:>5} {'OOM' if r.get('oom') else 'skipped':>10}")
                continue
            sh = r["shares"]
            lines.append(f"{shape:8} {r['precision']:5} {r['used']:5} {r['batch']:>5} {r['audio_s_per_s']:>10.1f} "
                         f"{sh['features']:>5.2f} {sh['encoder']:>5.2f} {sh['decoding']:>5.2f} "
                         f"{'-' if r['peak_gib'] is None else r['peak_gib']:>6}")
    lines += ["", "decoding time / encoder time (synthetic speech, calibrated CTC head)"]
    dec = report.get("decoding", [])
    if isinstance(dec, dict):
        lines.append(f"  {dec.get('error', '')}")
    else:
        lines += [f"  {r['method']:22} " + (f"{r['decoding_over_encoder']:.3f}" if "decoding_over_encoder" in r
                                            else r.get("skipped", "")) for r in dec]
    lines.append(f"suite wall time: {report['wall_seconds']:.0f} s" + (f" (budget {report['time_budget']:g} s)"
                                                                        if report.get("time_budget") else ""))
    if report["failures"]:
        lines += ["", "FAILED: " + "; ".join(report["failures"])]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shape, tiny batches, 20 s of speech: the code paths in minutes")
    p.add_argument("--runs", type=int, default=None, help="timed runs per throughput point (default 3; --quick 1)")
    p.add_argument("--e2e-minutes", type=float, default=None, help="speech for the model stage and the job (default 20; --quick 0.3)")
    p.add_argument("--shard-size", type=int, default=None, help="cuts per shard in the job (default 100; --quick 10)")
    p.add_argument("--stage-shard-size", type=int, default=None,
                   help="cuts per shard in the model-stage section (default 100; --quick 10)")
    p.add_argument("--stage-passes", type=int, default=None, help="passes over the speech in the model-stage section "
                   "(default 5; --quick 1)")
    p.add_argument("--stage-batch-seconds", type=float, default=None,
                   help="--max-batch-seconds of the model-stage section (default: automatic, as a job's)")
    p.add_argument("--e2e-batch-seconds", type=float, default=None,
                   help="--max-batch-seconds of the job (default: automatic)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds the benchmark may take: the throughput sweep and the decoding shares skip what "
                        "would start later (default 420 on CUDA, none on CPU)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zipscribe-bench" / "gpu_suite")
    p.add_argument("--json", type=Path, default=None, help="where to write the numbers (default <workdir>/gpu_suite.json)")
    p.add_argument("--job-timeout", type=float, default=600.0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch here has no CUDA (use --device cpu --quick to check the code paths)")
    quick = args.quick
    args.runs = args.runs or (1 if quick else 3)
    args.shard_size = args.shard_size or (10 if quick else 100)
    args.stage_shard_size = args.stage_shard_size or (10 if quick else 100)
    args.stage_passes = args.stage_passes or (1 if quick else 5)
    budget = args.time_budget if args.time_budget is not None else (420.0 if device.type == "cuda" else None)
    clock = Clock(budget)
    minutes = args.e2e_minutes or (0.3 if quick else 20.0)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(min(4, torch.get_num_threads()))

    audio_dir, utterances = po.ensure_audio(args.workdir, minutes, seed=0, jobs=8)
    speech = [po.decode_audio((audio_dir / u.name).read_bytes()).samples for u in utterances]
    texts = [u.text for u in utterances]
    shapes = ["small"] if quick else ["medium", "large"]
    first = po.ensure_model(args.workdir, shapes[0], "calibrated", 0, texts, speech[:6])[0]
    shipped = shipped_model_dir(args.workdir, first)
    report: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "auto_precision": resolve_precision("auto", device).reason, "time_budget": budget, "failures": [],
    }
    failures = report["failures"]
    section(report, "model_stage", lambda: model_stage(args, shipped, audio_dir, device), failures)
    section(report, "syncs", lambda: search_syncs(shipped, speech, device), failures)
    if report["syncs"].get("search"):
        failures.append(f"syncs: {report['syncs']['search']} host sync(s) inside the fused search")
    section(report, "end_to_end", lambda: end_to_end(args, shipped, audio_dir, device), failures)
    batch_sizes = [2, 4] if quick else [8, 16, 32, 64, 128, 256]
    seconds = 2.0 if quick else 10.0
    report["throughput"] = {}
    for shape in shapes:
        if not clock.left(reserve=60.0):
            report["throughput"][shape] = [{"precision": p, "batch": b, "skipped": "time budget"}
                                           for p in PRECISIONS for b in batch_sizes]
            continue
        section(report["throughput"], shape, lambda shape=shape: throughput(
            po.ensure_model(args.workdir, shape, "calibrated", 0, texts, speech[:6])[0], device, batch_sizes, seconds,
            args.runs, clock), failures)
    section(report, "decoding", lambda: decoding_shares(first, device, batch_sizes[len(batch_sizes) // 2],
                                                        min(seconds, 8.0), args.runs, speech, clock), failures)
    report["wall_seconds"] = clock.elapsed()
    out = args.json or args.workdir / "gpu_suite.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"(numbers: {out})")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

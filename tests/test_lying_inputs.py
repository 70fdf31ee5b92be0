"""Inputs that lie are stopped at planning: headers and manifest numbers are claims. Each case runs
the real job (``jobs/transcribe.py --plan-only``) in a child process: a clear error (an error row
for the cut, or one line and exit 2), never a traceback, in bounded memory and time; and a real
run turns the same cuts into error rows beside a cut that is transcribed."""

from __future__ import annotations

import gzip
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "model" / "assets" / "demo"
MAX_RSS_MB = 500
MAX_SECONDS = 30

_MEASURED = """
import json, resource, subprocess, sys, time
started = time.monotonic()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                  "seconds": time.monotonic() - started,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def plan_only(*manifests: str, extra: tuple[str, ...] = ()) -> dict:
    """``jobs/transcribe.py --plan-only`` in a child; its exit status, output, wall time and peak RSS."""
    args = [sys.executable, str(REPO / "jobs" / "transcribe.py"), "--plan-only", *extra]
    for m in manifests:
        args += ["--manifest", m]
    out = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True, timeout=300,
                         check=True)
    got = json.loads(out.stdout)
    assert "Traceback" not in got["stderr"], got["stderr"][-3000:]
    assert got["seconds"] < MAX_SECONDS and got["rss_mb"] < MAX_RSS_MB, (got["seconds"], got["rss_mb"])
    if got["rc"] == 0:
        got["plan"] = json.loads(got["stdout"])
    return got


def lying_wav(path: Path) -> Path:
    """60 bytes: a PCM header claiming 0xFFFFFFFE bytes of samples at 1 Hz, and 16 bytes of them."""
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 1, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 0xFFFFFFFE) + bytes(16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 0xFFFFFFFE) + body)
    assert path.stat().st_size == 60
    return path


def lying_flac(path: Path) -> Path:
    """42 bytes: a STREAMINFO claiming 2^36 - 1 samples at 1 Hz (6.9e10 s), and no frames."""
    info = struct.pack(">HH", 4096, 4096) + bytes(6)
    info += ((1 << 44) | (0 << 41) | (15 << 36) | ((1 << 36) - 1)).to_bytes(8, "big") + bytes(16)
    path.write_bytes(b"fLaC" + bytes([0x80, 0, 0, 34]) + info)
    assert path.stat().st_size == 42
    return path


def cut(cut_id: str, source: str, duration: float, start: float = 0.0, recording_seconds: float = 10.0,
        supervision: tuple[float, float] | None = None) -> dict:
    rec = {"id": f"rec-{cut_id}", "sources": [{"type": "file", "channels": [0], "source": source}],
           "sampling_rate": 16000, "num_samples": 160000, "duration": recording_seconds, "channel_ids": [0]}
    sups = [] if supervision is None else [{"id": f"{cut_id}-sup", "recording_id": rec["id"], "start": supervision[0],
                                            "duration": supervision[1], "channel": 0, "text": "words"}]
    return {"id": cut_id, "start": start, "duration": duration, "channel": 0, "type": "MonoCut",
            "supervisions": sups, "recording": rec}


def write_cuts(path: Path, cuts: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        for c in cuts:
            f.write(json.dumps(c) + "\n")  # json writes NaN / Infinity as lhotse manifests carry them
    return path


@pytest.fixture()
def good_wav(tmp_path) -> Path:
    path = tmp_path / "good.wav"
    sf.write(str(path), (0.1 * np.sin(np.arange(32000) / 5)).astype(np.float32), 16000, subtype="PCM_16")
    return path


@pytest.mark.parametrize("maker, claim", [(lying_wav, "4.29497e+09 s"), (lying_flac, "6.87195e+10 s")])
def test_a_header_claiming_more_than_its_file_holds_is_an_error_row(tmp_path, good_wav, maker, claim):
    """Probed as part of a directory: the claim is clipped to what the bytes hold and the file is an
    error row saying so; no window is planned for the claim (165 M of them before)."""
    folder = tmp_path / "audio"
    folder.mkdir()
    maker(folder / ("liar.wav" if maker is lying_wav else "liar.flac"))
    good_wav.rename(folder / "good.wav")
    got = plan_only(str(folder))
    assert got["rc"] == 0
    plan = got["plan"]
    assert plan["cuts"] == 2 and plan["errors"] == 1 and plan["windows"] == 0 and plan["items"] == 2
    (example,) = plan["error_examples"]
    assert example.startswith("liar.") and f"claims {claim}" in example and "truncated or damaged" in example


def test_manifest_numbers_that_are_not_times_are_error_rows(tmp_path, good_wav):
    src = str(good_wav)
    manifest = write_cuts(tmp_path / "cuts.jsonl.gz", [
        cut("ok", src, 2.0),
        cut("nan", src, math.nan),
        cut("inf", src, math.inf),
        cut("negative", src, -5.0),
        cut("nan-start", src, 1.0, start=math.nan),
        cut("late", src, 1.0, start=20.0, recording_seconds=10.0),
    ])
    got = plan_only(str(manifest))
    assert got["rc"] == 0
    plan = got["plan"]
    assert plan["cuts"] == 6 and plan["errors"] == 5 and plan["windows"] == 0 and plan["shards"] >= 1
    reasons = dict(e.split(": ", 1) for e in plan["error_examples"])
    assert set(reasons) == {"nan", "inf", "negative", "nan-start", "late"}
    assert "duration nan is not a finite number of seconds > 0" in reasons["nan"]
    assert "duration inf is not" in reasons["inf"] and "duration -5.0 is not" in reasons["negative"]
    assert "start nan is not a time in the recording" in reasons["nan-start"]
    assert "starts at 20 s, after its recording ends (10 s)" in reasons["late"]
    tight = plan_only(str(manifest), extra=("--max-recording-hours", "0.0005"))["plan"]  # 1.8 s: "ok" (2 s) too
    assert tight["errors"] == 6


def test_a_cut_a_billion_seconds_long_is_an_error_row_not_windows(tmp_path, good_wav):
    manifest = write_cuts(tmp_path / "cuts.jsonl.gz", [cut("huge", str(good_wav), 1e9, recording_seconds=1e9)])
    plan = plan_only(str(manifest))["plan"]
    assert plan["errors"] == 1 and plan["windows"] == 0
    assert "longer than --max-recording-hours (24 h)" in plan["error_examples"][0]


def test_a_gzip_bomb_without_newlines_is_one_line_and_exit_2(tmp_path):
    """2 MB that inflate to 2 GiB with no newline: the line is refused at 16 Mi characters."""
    member = gzip.compress(b"a" * (16 << 20), compresslevel=9)
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(member * 128)
    assert bomb.stat().st_size < 4 << 20
    got = plan_only(str(bomb))
    assert got["rc"] == 2
    (line,) = got["stderr"].strip().splitlines()
    assert line.startswith("error: ") and "bomb.jsonl.gz, line 1" in line and "longer than 16 Mi characters" in line


def test_a_line_that_is_not_a_cut_names_its_file_and_line(tmp_path, good_wav):
    manifest = tmp_path / "cuts.jsonl"
    manifest.write_text(json.dumps(cut("ok", str(good_wav), 2.0)) + "\n" + '{"id": "broken", "duration": NaN,\n')
    got = plan_only(str(manifest))
    assert got["rc"] == 2 and f"{manifest}, line 2: invalid JSON" in got["stderr"]


def test_supervision_segments_with_bad_times_are_error_rows(tmp_path, good_wav):
    manifest = write_cuts(tmp_path / "cuts.jsonl.gz", [cut("a", str(good_wav), 2.0, supervision=(0.0, 1.5)),
                                                       cut("b", str(good_wav), 2.0, supervision=(math.nan, 1.0))])
    plan = plan_only(str(manifest), extra=("--segments", "supervisions"))["plan"]
    assert plan["cuts"] == 2 and plan["errors"] == 1 and plan["error_examples"][0].startswith("b-sup: ")


def test_a_run_writes_the_lies_as_error_rows_and_transcribes_the_rest(tmp_path, good_wav):
    """The real pipeline (in one process): the lying files and numbers are error rows with their
    reason, their audio never fetched; the good cut is transcribed."""
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    liar = lying_wav(tmp_path / "liar.wav")
    flac = lying_flac(tmp_path / "liar.flac")
    listing = tmp_path / "files.txt"
    listing.write_text(f"{liar}\n{flac}\n{good_wav}\n")
    manifest = write_cuts(tmp_path / "cuts.jsonl.gz", [cut("nan", str(good_wav), math.nan),
                                                       cut("huge", str(good_wav), 1e9, recording_seconds=1e9)])
    cfg = TranscribeConfig(manifest=[str(listing), str(manifest)], model=str(DEMO), output=str(tmp_path / "out"))
    done = run_in_process(cfg, "lies", num_threads=2)
    table = pq.read_table(tmp_path / "out" / "transcripts" / "run_id=lies")
    rows = {Path(r["cut_id"]).name: r for r in table.to_pylist()}
    assert set(rows) == {"liar.wav", "liar.flac", "good.wav", "nan", "huge"}
    assert rows["good.wav"]["status"] == "ok" and rows["good.wav"]["duration"] == pytest.approx(2.0)
    for name, reason in (("liar.wav", "claims 4.29497e+09 s"), ("liar.flac", "claims 6.87195e+10 s"),
                         ("nan", "not a finite number"), ("huge", "--max-recording-hours")):
        assert rows[name]["status"] == "error" and reason in rows[name]["error"], rows[name]
    assert sum(r.bytes_fetched for r in done["shards"]) < 70_000  # the good file and two headers

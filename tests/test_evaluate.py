"""The nightly evaluation job end to end: real Ray (local, and one run through ``ray job
submit`` on a head with token auth), espeak-ng audio, the tiny random model, Parquet read
back with DuckDB, the HTML report in headless Chromium.

The sequence: night 1 transcribes two eval sets and creates the history (first run: passes).
The eval sets' references are then replaced by night 1's own transcripts, so the same model
scores WER 0 on night 2 (an improvement: passes). Night 3 runs a copy of the model with
perturbed weights: its WER is above 0, more than the allowed regression, and the gate fails
with a non-zero exit and one verdict line per dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import torch

from audio_testing import speak
from browser import CHECK_ID, pixels, render_check, screenshot
from helpers import edit_distance, make_tiny_model_dir, named_queries
from services import REPO, RayHead

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox")

# (cut id, text, voice, speaker); "broken" is unreadable audio with a reference: a failed cut
EVAL_SETS = {
    "clean": [("c1", "the quick brown fox jumps over the lazy dog", "en-us", "anna"),
              ("c2", "speech recognition turns audio into text", "en-gb", "bert"),
              ("c3", "object storage holds the audio", "en-us", "anna")],
    "other": [("o1", "numbers like one two three four five", "en-gb", "carl"),
              ("o2", "a batch transcription service on ray", "en-us", "dora"),
              ("broken", "never heard at all", None, "dora")],
}


def write_manifest(path: Path, cuts: list[dict]) -> Path:
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    with path.open("w") as f:
        for c in cuts:
            rec = Recording(id=c["id"], sources=[AudioSource(type="file", channels=[0], source=str(c["audio"]))],
                            sampling_rate=16000, num_samples=c["samples"], duration=c["samples"] / 16000)
            sup = SupervisionSegment(id=c["id"], recording_id=c["id"], start=0, duration=rec.duration, channel=0,
                                     text=c["text"], speaker=c["speaker"], language="English")
            cut = MonoCut(id=c["id"], start=0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])
            f.write(json.dumps(cut.to_dict()) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("nightly")
    cuts: dict[str, list[dict]] = {}
    for name, items in EVAL_SETS.items():
        cuts[name] = []
        for cut_id, text, voice, speaker in items:
            audio = root / f"{cut_id}.wav"
            if voice:
                speak(text, audio, voice=voice)
                samples = sf.info(str(audio)).frames
            else:
                audio.write_bytes(b"RIFF" + os.urandom(3000))
                samples = 16000
            cuts[name].append(dict(id=cut_id, audio=audio, samples=samples, text=text, speaker=speaker))
    model_a = make_tiny_model_dir(root / "model-a")
    model_b = root / "model-b"  # the same model with perturbed weights: a deliberately worse model
    shutil.copytree(model_a, model_b)
    state = torch.load(model_b / "pretrained.pt", weights_only=True)
    gen = torch.Generator().manual_seed(1)
    for key, t in state["model"].items():
        if t.is_floating_point() and t.numel() > 1:
            state["model"][key] = t + torch.randn(t.shape, generator=gen) * t.std()
    torch.save(state, model_b / "pretrained.pt")
    return dict(root=root, cuts=cuts, model_a=model_a, model_b=model_b, out=root / "out", hist=root / "hist")


def local_env(world) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(world["root"] / "cache"))
    env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
    env.pop("ZIPSCRIBE_GIT_REVISION", None)
    return env


def evaluate_args(world, manifests: dict[str, Path], model: Path, run_id: str) -> list[str]:
    args = ["jobs/evaluate.py", "--model", str(model), "--output", str(world["out"]), "--history", str(world["hist"]),
            "--run-id", run_id, "--max-regression", "1.0", "--no-progress", "--shard-size", "2"]
    for name, path in manifests.items():
        args += ["--eval-set", f"{name}={path}"]
    return args


def run_local(world, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=local_env(world), capture_output=True, text=True, timeout=600)


def verdict_lines(text: str) -> dict[str, str]:
    """``{dataset: verdict line}`` from the job's output."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^(clean|other) \[[^\]]+\]: [A-Z-]+ .*$", text, re.M)}


def transcripts(world, run_id: str) -> list[dict]:
    return [r for p in sorted((world["out"] / "transcripts").glob(f"run_id={run_id}.*/*.parquet"))
            for r in pq.read_table(p).to_pylist()]


def check_rows_and_report(world, run_id: str) -> dict[str, float]:
    """Transcript rows carry consistent WER columns; the report's per-dataset numbers equal an
    independent edit distance over the rows. Returns {dataset: WER}."""
    from pipeline.report.normalize import get_normalizer

    norm = get_normalizer("english")
    rows = transcripts(world, run_id)
    assert sorted(r["cut_id"] for r in rows) == sorted(c["id"] for cs in world["cuts"].values() for c in cs)
    truth: dict[str, list[int]] = {}
    for r in rows:
        if r["status"] == "error":
            assert r["cut_id"] == "broken" and r["errors"] is None and r["ref_norm"] == "never heard at all"
            continue
        assert r["ref_norm"] == norm(r["reference"]) and r["hyp_norm"] == norm(r["text"])
        ref, hyp = r["ref_norm"].split(), r["hyp_norm"].split()
        assert r["ref_words"] == len(ref)
        assert r["substitutions"] + r["deletions"] + r["insertions"] == r["errors"] == edit_distance(ref, hyp)
        t = truth.setdefault(r["dataset"], [0, 0])
        t[0] += len(ref)
        t[1] += r["errors"]
    report = pq.read_table(world["out"] / "wer_groups" / f"run_id={run_id}" / "part-00000.parquet").to_pylist()
    wer = {}
    for g in report:
        if g["group_by"] == "dataset":
            n, e = truth[g["dataset"]]
            assert (g["ref_words"], g["errors"]) == (n, e)
            assert g["failed"] == (1 if g["dataset"] == "other" else 0)
            wer[g["dataset"]] = g["wer"]
    assert set(wer) == {"clean", "other"}
    return wer



def test_help_and_bad_input_fail_fast(world):
    helptext = subprocess.run([sys.executable, "jobs/evaluate.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert helptext.returncode == 0
    for words in ("--eval-set NAME=URI", "--max-regression", "wer_history/run_id=<run-id>", "REGRESSION", "Exit status",
                  "english+numbers", "ZIPSCRIBE_GIT_REVISION", "--accept", "--max-rtfx-drop PCT", "--price KIND=USD_PER_HOUR",
                  "--prices FILE", "--metrics {auto,on,off}"):
        assert words in helptext.stdout, words
    bad = run_local(world, evaluate_args(world, {"clean": world["root"] / "missing.jsonl"}, world["model_a"], "bad"))
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    usage = run_local(world, evaluate_args(world, {"bad name": world["root"] / "x.jsonl"}, world["model_a"], "bad"))
    assert usage.returncode == 2 and "invalid eval-set name" in usage.stderr
    assert not (world["hist"] / "wer_history").exists()


@pytest.fixture(scope="module")
def nightly(world):
    """Three nights of evaluation on the same eval sets (see the module docstring); returns the
    jobs' outputs and night 1's per-dataset WER. Each night needs the one before it, so a
    failure stops here and errors every test that uses the outputs."""
    root = world["root"]
    manifests = {name: write_manifest(root / f"{name}-1.jsonl", cuts) for name, cuts in world["cuts"].items()}

    # night 1: first run, no history
    first = run_local(world, evaluate_args(world, manifests, world["model_a"], "night-1"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    wer1 = check_rows_and_report(world, "night-1")

    # references := night 1's own transcripts (the model now matches them exactly)
    texts = {r["cut_id"]: r["text"] for r in transcripts(world, "night-1") if r["status"] == "ok"}
    assert sum(len(t.split()) for t in texts.values()) >= 4, texts
    relabelled = {name: write_manifest(root / f"{name}-2.jsonl", [dict(c, text=texts.get(c["id"], c["text"])) for c in cuts])
                  for name, cuts in world["cuts"].items()}

    # night 2: same model, submitted as a Ray job to a cluster with token auth
    head = RayHead(num_cpus=2, env={"ZIPSCRIBE_CACHE": str(root / "cache-head")}).start()
    try:
        second = head.submit(evaluate_args(world, relabelled, world["model_a"], "night-2"),
                             extra_env={"ZIPSCRIBE_GIT_REVISION": "rev-night-2"})
    finally:
        head.stop()
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]

    # night 3: the perturbed model is worse by more than --max-regression 1.0 (its speed is gated too, loosely)
    third = run_local(world, evaluate_args(world, relabelled, world["model_b"], "night-3") + ["--max-rtfx-drop", "99"])
    return dict(first=first, second=second, third=third, wer1=wer1)


def test_nightly_sequence_creates_history_passes_then_trips_the_gate(world, nightly):
    first, second, third, wer1 = nightly["first"], nightly["second"], nightly["third"], nightly["wer1"]
    lines = verdict_lines(first.stdout)
    assert set(lines) == {"clean", "other"}
    assert all(": FIRST " in line and "first run" in line for line in lines.values()), lines
    assert "evaluation passed: 2 of 2 checks passed" in first.stdout

    lines = verdict_lines(second.stdout)
    assert all(": PASS  WER 0.00% (baseline" in line and "in run night-1" in line for line in lines.values()), lines
    assert check_rows_and_report(world, "night-2") == {"clean": 0.0, "other": 0.0}

    # night 3: exit 1, a verdict per dataset
    assert third.returncode == 1, third.stdout[-3000:] + third.stderr[-3000:]
    wer3 = check_rows_and_report(world, "night-3")
    lines = verdict_lines(third.stdout)
    assert set(lines) == {"clean", "other"}
    for name, line in lines.items():
        assert wer3[name] > 0.01
        assert f": REGRESSION  WER {100 * wer3[name]:.2f}% (baseline 0.00% in run night-2" in line, line
        assert f"WER +{100 * wer3[name]:.2f} points > 1 allowed" in line, line
    assert "evaluation FAILED: 2 of 2 checks failed" in third.stdout
    assert "error: WER regression gate failed for clean [" in third.stderr

    # the history: one row per (dataset, decoding) and night, partitioned by run id
    con = duckdb.connect()
    hist_rows = con.execute(
        f"SELECT run_id, dataset, decoding, gate, wer, model_sha256, git_revision, rtfx, wall_seconds, baseline_run_id, "
        f"typeof(day) FROM read_parquet('{world['hist']}/wer_history/**/*.parquet', hive_partitioning = 1, "
        "hive_types_autocast = 0) ORDER BY created_at, dataset").fetchall()
    assert [(r[0], r[1], r[3]) for r in hist_rows] == [
        ("night-1", "clean", "first"), ("night-1", "other", "first"), ("night-2", "clean", "pass"),
        ("night-2", "other", "pass"), ("night-3", "clean", "fail"), ("night-3", "other", "fail")]
    assert [r[4] for r in hist_rows[:2]] == [wer1["clean"], wer1["other"]]
    assert len({r[2] for r in hist_rows}) == 1 and hist_rows[0][2].startswith("attention-rescoring")
    assert hist_rows[0][5] != hist_rows[4][5] and len(hist_rows[0][5]) == 64  # model checksums differ
    assert hist_rows[2][6] == "rev-night-2"  # from the job's environment (no .git in the upload)
    assert all(r[7] > 0 and r[8] > 0 for r in hist_rows) and all(r[10] == "DATE" for r in hist_rows)
    assert hist_rows[4][9] == "night-2"

    # speed and cost: the runs' resources held (no GPU here: CPU core-hours) at the example prices
    from pipeline.run.cost import resolve_prices

    cpu_price = resolve_prices().rates["cpu"]
    ops = con.execute(
        f"SELECT run_id, dataset, rtfx, gpu_hours, node_hours, cpu_core_hours, cost_usd, cost_per_audio_hour_usd, "
        f"rtfx_delta_pct FROM read_parquet('{world['hist']}/wer_history/**/*.parquet', hive_partitioning = 1, "
        "hive_types_autocast = 0) ORDER BY created_at, dataset").fetchall()
    for run_id, dataset, rtfx, gpu_h, node_h, core_h, usd, per_hour, _ in ops:
        assert gpu_h == 0 and node_h > 0 and core_h > 0, (run_id, dataset)
        assert usd == pytest.approx(core_h * cpu_price, rel=1e-9) and per_hour > 0
    night2, night3 = {r[1]: r for r in ops if r[0] == "night-2"}, {r[1]: r for r in ops if r[0] == "night-3"}
    for name in ("clean", "other"):  # night 3's RTFx change against its baseline, night 2
        assert night3[name][8] == pytest.approx(100 * (night3[name][2] / night2[name][2] - 1), rel=1e-6)

    # summary.md and the HTML page of night 3
    report_dir = world["out"] / "reports" / "run_id=night-3"
    md = (report_dir / "summary.md").read_text()
    assert "## Regression check" in md and lines["clean"] in md and "## Worst utterances" in md
    assert pq.read_table(world["out"] / "wer_errors" / "run_id=night-3" / "part-00000.parquet").num_rows > 0
    html = (report_dir / "report.html").read_text()
    assert html.count("<svg") == 4 and "WER over time" in html and "REGRESSION" in html
    assert "Speed and cost over time" in html and "RTFx change" in html


@pytest.mark.needs_tools("chromium")
def test_nightly_html_report_renders_in_chromium(world, nightly):
    """Night 3's page in a real headless Chromium: four plots laid out, no script errors, not blank."""
    page = world["out"] / "reports" / "run_id=night-3" / "report.html"
    proc, dom = render_check(page)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads(re.search(rf'<div id="{CHECK_ID}">(.*?)</div>', dom).group(1).replace("&quot;", '"'))
    assert check["errors"] == [] and len(check["svgs"]) == 4
    png = world["root"] / "night-3.png"
    assert screenshot(page, png).returncode == 0
    img = pixels(png)
    assert (img < 0.95).any(axis=2).mean() > 0.03  # not blank


def test_documented_duckdb_queries_run_on_real_outputs(world, nightly):
    """docs/queries.sql, each named query, against the outputs of the nightly sequence."""
    queries = named_queries()
    assert {"wer_per_dataset_over_time", "worst_speakers", "transcripts_search"} <= set(queries)
    con = duckdb.connect()
    con.execute(f"SET VARIABLE output = '{world['out']}'")
    con.execute(f"SET VARIABLE history = '{world['hist']}'")
    con.execute("SET VARIABLE run_id = 'night-3'")
    con.execute("SET VARIABLE pattern = '%quick brown%'")
    # a phrase night 3 said: the first two words of a transcript, from its words table
    first = con.sql(f"SELECT list(lower(word) ORDER BY word_index)[1:2] FROM read_parquet('{world['out']}/words/"
                    "run_id=night-3.*/*.parquet') GROUP BY cut_id HAVING count(*) >= 2 ORDER BY cut_id LIMIT 1"
                    ).fetchall()[0][0]
    con.execute("SET VARIABLE phrase = $p", {"p": first})
    results = {}
    for name, sql in queries.items():
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        results[name] = [dict(zip(cols, r)) for r in cur.fetchall()]

    over_time = results["wer_per_dataset_over_time"]
    assert [(r["dataset"], r["run_id"]) for r in over_time] == [
        ("clean", "night-1"), ("clean", "night-2"), ("clean", "night-3"),
        ("other", "night-1"), ("other", "night-2"), ("other", "night-3")]
    assert [r["wer_pct"] for r in over_time if r["run_id"] == "night-2"] == [0.0, 0.0]
    assert {(r["dataset"], r["run_id"], r["baseline_run_id"]) for r in results["latest_regressions"]} == {
        ("clean", "night-3", "night-2"), ("other", "night-3", "night-2")}

    speakers = results["worst_speakers"]
    assert {r["speaker"] for r in speakers} == {"anna", "bert", "carl", "dora"}
    assert [r["wer_pct"] for r in speakers] == sorted((r["wer_pct"] for r in speakers), reverse=True)

    found = results["transcripts_search"]
    hits = {(r["run_id"], r["cut_id"]): r for r in found}
    assert ("night-1.clean", "c1") in hits  # later nights' references are night 1's texts
    assert hits[("night-1.clean", "c1")]["ref_norm"] == EVAL_SETS["clean"][0][1]
    assert all("quick brown" in f"{r['reference']} {r['text']}".lower() for r in found)

    said = results["phrase_search"]
    assert said and all(r["run_id"].startswith("night-3.") and r["start_s"] < r["end_s"] for r in said)
    rates = results["words_per_minute_per_speaker"]
    assert {r["speaker"] for r in rates} <= {"anna", "bert", "carl", "dora"} and all(r["words"] > 0 for r in rates)

    assert {r["duration_bucket"] for r in results["wer_by_duration"]} <= {"0-2s", "2-5s", "5-10s", "10-20s", "20s+"}
    assert all(r["count"] >= 1 for r in results["most_frequent_substitutions"])


def test_report_from_duckdb_equals_the_row_by_row_report_on_real_runs(world, nightly):
    """The reports the nights wrote (DuckDB queries over the parts) against the old way of
    building them (every row in Python, every utterance aligned again): same groups and numbers,
    same error tables, same worst utterances."""
    from datetime import datetime, timezone

    from pipeline.report.files import build_run_report, read_rows
    from reference_report import reference_report

    for night in ("night-1", "night-3"):
        dirs = sorted(str(p) for p in (world["out"] / "transcripts").glob(f"run_id={night}.*"))
        when = datetime(2026, 12, 1, tzinfo=timezone.utc)
        report = build_run_report(dirs, run_id=night, normalizer="english", created_at=when)
        table, errors, worst = reference_report(read_rows(dirs), night, "english", when)
        assert report.table.to_pylist() == table.to_pylist()
        assert report.errors.to_pylist() == errors.to_pylist() and errors.num_rows > 0
        assert [(w.cut_id, w.alignment) for w in report.worst] == [(w.cut_id, w.alignment) for w in worst]
        written = pq.read_table(world["out"] / "wer_errors" / f"run_id={night}" / "part-00000.parquet")
        assert written.to_pylist() == errors.to_pylist()


def test_several_decodings_are_one_transcription_per_set(world, nightly):
    """--decoding three times: each set is transcribed once (one transcripts directory, each cut
    once per decoding), the report and the history have a row per (set, decoding), and the
    attention-rescoring rows equal night 1's (which ran that method alone, on the same audio)."""
    root = world["root"]
    manifests = {name: root / f"{name}-1.jsonl" for name in EVAL_SETS}
    out, hist = root / "multi-out", root / "multi-hist"
    args = evaluate_args(world, manifests, world["model_a"], "multi")
    args[args.index("--output") + 1], args[args.index("--history") + 1] = str(out), str(hist)
    for method in ("ctc-greedy", "ctc-beam", "attention-rescoring"):
        args += ["--decoding", method]
    proc = run_local(world, args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dirs = sorted(p.name for p in (out / "transcripts").iterdir())
    assert dirs == ["run_id=multi.clean", "run_id=multi.other"]
    rows = [r for d in dirs for r in pq.read_table(out / "transcripts" / d).to_pylist()]
    labels = sorted({r["decoding"] for r in rows})
    assert len(labels) == 3
    cut_ids = sorted(c["id"] for cs in world["cuts"].values() for c in cs)
    assert sorted((r["cut_id"], r["decoding"]) for r in rows) == sorted((c, d) for c in cut_ids for d in labels)
    night1 = {r["cut_id"]: r["text"] for r in transcripts(world, "night-1")}
    rescored = {r["cut_id"]: r["text"] for r in rows if r["decoding"].startswith("attention-rescoring")}
    assert rescored == night1
    history = duckdb.connect().sql(f"SELECT dataset, decoding, gate FROM read_parquet('{hist}/wer_history/**/*.parquet') "
                                   "ORDER BY dataset, decoding").fetchall()
    assert [(d, dec) for d, dec, _ in history] == [(d, dec) for d in ("clean", "other") for dec in labels]
    assert all(gate == "first" for _, _, gate in history)
    assert len(re.findall(r"^(clean|other) \[[^\]]+\]: FIRST ", proc.stdout, re.M)) == 6


def test_a_report_that_cannot_be_written_leaves_the_history_row_and_the_exit_status(world, tmp_path):
    """The night's record stands whatever happens to its report: where the report's first table
    goes, a plain file stands (a folder that cannot be made, from outside the job); the job logs
    why the report is missing, appends its history rows and exits with its transcripts' status
    (0: a first run passes), not a traceback."""
    out, history = tmp_path / "out", tmp_path / "hist"
    out.mkdir()
    (out / "wer_groups").write_text("not a folder\n")
    manifest = write_manifest(tmp_path / "clean.jsonl", world["cuts"]["clean"])
    args = ["jobs/evaluate.py", "--model", str(world["model_a"]), "--output", str(out), "--history", str(history),
            "--run-id", "blocked-report", "--no-progress", "--eval-set", f"clean={manifest}"]
    proc = run_local(world, args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "the WER report of blocked-report could not be written" in proc.stderr
    assert (out / "wer_groups").read_text() == "not a folder\n"
    rows = pq.read_table(history / "wer_history" / "run_id=blocked-report").to_pylist()
    assert [(r["dataset"], r["gate"], r["scored"]) for r in rows] == [("clean", "first", 3)]
    assert len(transcripts(dict(world, out=out), "blocked-report")) == 3

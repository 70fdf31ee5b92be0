"""Users' own icefall models through the jobs: a Hugging Face repo on S3 and a training folder
with icefall's averaging and chunked decoding through a real Ray head (`ray job submit`),
`jobs/inspect_model.py`, and every model-loading failure as one line and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from icefall_layouts import CAUSAL, hf_repo, save_torchscript, train_bpe_dir, training_run
from s3_testing import moto_environment
from services import REPO, RayHead


@pytest.fixture(scope="module")
def s3():
    with moto_environment() as env:
        yield env


@pytest.fixture(scope="module")
def models(s3, tmp_path_factory):
    """An HF-style repo uploaded to s3://models/hf/icefall-asr-test-repo/, a training run on disk,
    and a folder of audio (noise and tones: the models are random; the tests check plumbing)."""
    import boto3

    root = tmp_path_factory.mktemp("own-models")
    repo = hf_repo(root / "icefall-asr-test-repo")
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    for f in repo.rglob("*"):
        if f.is_file():
            client.put_object(Bucket="models", Key=f"hf/icefall-asr-test-repo/{f.relative_to(repo).as_posix()}",
                              Body=f.read_bytes())
    run = training_run(root / "recipe", CAUSAL, epochs=4)
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        t = np.arange(int(16000 * (1.5 + 0.5 * i))) / 16000
        x = 0.2 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(audio / f"clip-{i}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
    return {"repo": repo, "s3_repo": "s3://models/hf/icefall-asr-test-repo", "run": run, "audio": audio, "root": root}


@pytest.fixture(scope="module")
def ray_head(s3, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    head = RayHead(num_cpus=2, env={**s3, "ZIPSCRIBE_CACHE": str(cache)}).start()
    head.cache = cache
    yield head
    head.stop()


def plain(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", ZIPSCRIBE_CACHE=str(tmp_path / "cache"))
    env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def summary_of(text: str) -> dict:
    return json.loads(text[text.index("{\n"): text.rindex("}") + 1])


def test_hf_repo_on_s3_through_a_ray_job(ray_head, models, tmp_path):
    """--model at the repo root on S3: exp/pretrained.pt and data/lang_bpe_60 found, the
    TorchScript export and the rest of the repo not fetched."""
    out = tmp_path / "out"
    proc = ray_head.submit(["jobs/transcribe.py", "--manifest", str(models["audio"]), "--model", models["s3_repo"],
                            "--output", str(out), "--run-id", "hf", "--summary-json", "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = summary_of(proc.stdout)
    assert summary["model_id"] == "icefall-asr-test-repo" and summary["cuts_ok"] == 4
    assert summary["model_weights"] == "pretrained.pt (model)"
    assert summary["decoding"].startswith("attention-rescoring")  # auto, for CTC + attention decoder
    table = pq.read_table(out / "transcripts" / "run_id=hf")
    assert set(table.column("model_id").to_pylist()) == {"icefall-asr-test-repo"}
    fetched = sorted(p.relative_to(ray_head.cache / "models").as_posix().split("/", 1)[-1]  # after <hash>/
                     for p in ray_head.cache.rglob("*") if p.is_symlink())
    assert fetched == ["m/hf/icefall-asr-test-repo/data/lang_bpe_60/bpe.model",
                       "m/hf/icefall-asr-test-repo/data/lang_bpe_60/tokens.txt",
                       "m/hf/icefall-asr-test-repo/exp/pretrained.pt"]


def test_training_folder_averaged_and_chunked_through_a_ray_job(ray_head, models, tmp_path):
    """icefall's `--epoch 4 --avg 2 --use-averaged-model` on the recipe's exp/ folder, a causal
    model decoded in chunks: the summary and every row say which weights and which chunking."""
    from model.recognizer import Recognizer
    from model.weights import WeightsSelection

    out = tmp_path / "out"
    exp = models["run"]["exp"]
    proc = ray_head.submit(["jobs/transcribe.py", "--manifest", str(models["audio"]), "--model", str(exp),
                            "--output", str(out), "--run-id", "avg", "--summary-json", "--no-progress",
                            "--epoch", "4", "--avg", "2", "--use-averaged-model",
                            "--chunk-size", "16", "--left-context-frames", "32", "--decoding", "ctc-greedy"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = summary_of(proc.stdout)
    assert summary["model_id"] == "zipformer@epoch-4-avg-2-use-averaged-model"
    assert "model_avg over the batches between epoch-2.pt (excluded) and epoch-4.pt" in summary["model_weights"]
    assert summary["decoding"] == "ctc-greedy chunk=16 left=32"
    rec = Recognizer.from_dir(exp, weights=WeightsSelection(epoch=4, avg=2, use_averaged_model=True),
                              decoding={"method": "ctc-greedy", "chunk_size": 16, "left_context_frames": 32})
    assert summary["model_sha256"] == rec.info.sha256
    table = pq.read_table(out / "transcripts" / "run_id=avg")
    assert set(table.column("decoding").to_pylist()) == {"ctc-greedy chunk=16 left=32"}
    assert set(table.column("model_sha256").to_pylist()) == {rec.info.sha256}


def test_inspect_model_on_s3_and_locally(models, tmp_path):
    proc = plain(["jobs/inspect_model.py", models["s3_repo"], "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["layout"].startswith("icefall repo") and report["model_dir"] == models["s3_repo"]
    assert report["vocabulary"]["agree"] and report["vocabulary"]["tokenizer_file"].endswith("lang_bpe_60/bpe.model")
    assert [Path(f["path"]).name for f in report["checkpoint"]["files"]] == ["pretrained.pt"]
    human = plain(["jobs/inspect_model.py", str(models["run"]["exp"]), "--epoch", "3", "--avg", "2"], tmp_path)
    assert human.returncode == 0, human.stderr[-3000:]
    assert "mean of 2 checkpoints' model: epoch-2.pt, epoch-3.pt" in human.stdout
    assert "causal:       yes; config chunk_size -1, left_context_frames -1; decoding with full context" in human.stdout


def _bad_dirs(root: Path, models: dict) -> dict[str, tuple[list[str], str]]:
    """name -> (model args, what the error must say)."""
    jit = root / "jit-only"
    jit.mkdir()
    save_torchscript(jit / "jit_script.pt")
    train_bpe_dir(jit, 60)
    mismatch = root / "vocab-mismatch"
    shutil.copytree(models["repo"], mismatch)
    other = root / "other-tokens"
    n = train_bpe_dir(other, 90)
    shutil.rmtree(mismatch / "data" / "lang_bpe_60")
    shutil.copytree(other, mismatch / "data" / "lang_bpe_90")
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "pretrained.pt").write_bytes(b"PK\x03\x04 truncated download")
    train_bpe_dir(corrupt, 60)
    exp = str(models["run"]["exp"])
    return {
        "torchscript": (["--model", str(jit)], "only TorchScript exports (jit_script.pt)"),
        "vocab": (["--model", str(mismatch)], f"but {mismatch}/data/lang_bpe_90/bpe.model has {n}"),
        "corrupt": (["--model", str(corrupt)], "pretrained.pt: not a readable torch checkpoint"),
        "missing-epoch": (["--model", exp, "--epoch", "7", "--avg", "2"], "needs epoch-6.pt, epoch-7.pt"),
        "avg-alone": (["--model", exp, "--avg", "2"], "--avg needs --epoch or --iter"),
        "chunk-offline": (["--model", str(models["repo"]), "--chunk-size", "16"], "chunk_size 16 needs a causal"),
        "no-dir": (["--model", str(root / "nope")], "model directory not found"),
    }


def test_every_model_loading_failure_is_one_line_and_exit_2(models, tmp_path):
    cases = _bad_dirs(tmp_path, models)
    for name, (model_args, message) in cases.items():
        for job in ("transcribe", "evaluate", "inspect"):
            if job == "transcribe":
                args = ["jobs/transcribe.py", "--manifest", str(models["audio"]), "--output", str(tmp_path / "o"),
                        "--no-progress", *model_args]
            elif job == "evaluate":
                args = ["jobs/evaluate.py", "--eval-set", f"noise={models['audio']}", "--output", str(tmp_path / "e"),
                        "--history", str(tmp_path / "h"), "--no-progress", *model_args]
            else:
                args = ["jobs/inspect_model.py", model_args[1], *model_args[2:]]
            proc = plain(args, tmp_path, timeout=120)
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
            where = f"{job} / {name}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, where
            assert len(errors) == 1 and message in errors[0], where

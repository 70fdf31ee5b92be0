"""pipeline.io.storage against a real moto S3 server over HTTP, a fault-injecting proxy, and
real local files."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import boto3
import pytest

from pipeline.io import storage
from pipeline.io.storage import ChecksumMismatchError, MissingObjectError, S3Options, StorageError
from s3_testing import FaultProxy, free_port, moto_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def endpoint() -> str:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        with moto_server() as url:
            yield url


def make_opts(url: str, **kw: object) -> S3Options:
    base = dict(endpoint_url=url, region="us-east-1", access_key_id="testing", secret_access_key="testing",
                max_attempts=4, backoff_base=0.05)
    base.update(kw)
    return S3Options(**base)  # type: ignore[arg-type]


@pytest.fixture()
def opts(endpoint: str) -> S3Options:
    return make_opts(endpoint)


@pytest.fixture()
def bucket(endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture()
def proxy(endpoint: str):
    with FaultProxy(endpoint) as p:
        yield p


def test_s3_round_trip_size_exists(bucket: str, opts: S3Options) -> None:
    uri = f"s3://{bucket}/dir/blob.bin"
    data = os.urandom(300_000)
    assert not storage.exists(uri, options=opts)
    storage.write_bytes_atomic(uri, data, options=opts)
    assert storage.exists(uri, options=opts)
    assert storage.size(uri, options=opts) == len(data)
    assert storage.read_bytes(uri, options=opts) == data
    # the object is visible to a plain boto3 client too (a real PUT happened)
    raw = boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1")
    assert raw.get_object(Bucket=bucket, Key="dir/blob.bin")["Body"].read() == data

    text_uri = storage.join(f"s3://{bucket}", "dir", "note.txt")
    assert text_uri == f"s3://{bucket}/dir/note.txt"
    storage.write_text_atomic(text_uri, "héllo\nwörld\n", options=opts)
    assert storage.read_bytes(text_uri, options=opts) == "héllo\nwörld\n".encode()
    with storage.open_text(text_uri, options=opts) as f:
        assert list(f) == ["héllo\n", "wörld\n"]
    # an empty object
    storage.write_bytes_atomic(f"s3://{bucket}/empty", b"", options=opts)
    assert storage.read_bytes(f"s3://{bucket}/empty", options=opts) == b""
    assert storage.size(f"s3://{bucket}/empty", options=opts) == 0


def test_local_round_trip_plain_and_file_uri(tmp_path: Path) -> None:
    plain = str(tmp_path / "a" / "b" / "x.bin")
    storage.write_bytes_atomic(plain, b"abc")
    assert Path(plain).read_bytes() == b"abc"
    file_uri = "file://" + str(tmp_path / "a" / "b" / "with%20space.txt")
    storage.write_text_atomic(file_uri, "line1\nline2\n")
    assert (tmp_path / "a" / "b" / "with space.txt").read_text() == "line1\nline2\n"
    assert storage.read_bytes(file_uri) == b"line1\nline2\n"
    assert storage.size(plain) == 3 and storage.exists(plain) and storage.exists(file_uri)
    assert not storage.exists(str(tmp_path / "nope")) and not storage.exists(str(tmp_path))
    assert storage.join("file://" + str(tmp_path), "a", "b/") == "file://" + str(tmp_path / "a" / "b")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        storage.read_bytes("gs://bucket/key")


def stored(where: str, name: str, data: bytes, bucket: str, opts: S3Options, tmp_path: Path,
           proxy: FaultProxy) -> tuple[str, Optional[S3Options]]:
    """``data`` written as ``name`` in the bucket (``where`` "s3") or under ``tmp_path``; returns its
    URI and the options that read it (on S3 through the byte-counting proxy)."""
    if where == "s3":
        uri = f"s3://{bucket}/{name}"
        storage.write_bytes_atomic(uri, data, options=opts)
        return uri, make_opts(proxy.url)
    uri = str(tmp_path / name)
    storage.write_bytes_atomic(uri, data)
    return uri, None


@pytest.mark.parametrize("where", ["s3", "local"])
def test_read_range(where: str, bucket: str, opts: S3Options, tmp_path: Path, proxy: FaultProxy) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    uri, ropts = stored(where, "r.bin", data, bucket, opts, tmp_path, proxy)
    assert storage.read_range(uri, 0, 10, options=ropts) == data[:10]
    assert storage.read_range(uri, 1000, 5000, options=ropts) == data[1000:5000]
    assert storage.read_range(uri, 10000, 99999, options=ropts) == data[10000:]  # clipped
    assert storage.read_range(uri, 5000, None, options=ropts) == data[5000:]
    assert storage.read_range(uri, 10240, 10300, options=ropts) == b""  # starts at the end
    assert storage.read_range(uri, 50_000, 60_000, options=ropts) == b""
    with pytest.raises(ValueError):
        storage.read_range(uri, 10, 5, options=ropts)
    if where == "s3":
        # ranged GETs, not whole-object reads: 6 GETs in total, each for a slice
        assert proxy.gets(f"/{bucket}/r.bin") == 6


TRICKY_NAMES = [
    "a.wav", "A.wav", "a-b.wav", "a/b.wav", "a/c/d.wav", "a0.wav", "b/z.flac", "b/notes.txt",
    "b/x/y/deep.wav", "a_b.WAV",
]


def test_list_files_pagination_order_and_filter(bucket: str, opts: S3Options, tmp_path: Path,
                                                proxy: FaultProxy) -> None:
    prefix = f"s3://{bucket}/audio"
    keys = [f"spk{i % 3}/utt{i:03d}.wav" for i in range(30)] + ["readme.txt", "x/notes.md"]
    for key in keys:
        storage.write_bytes_atomic(f"{prefix}/{key}", b"x", options=opts)
    storage.write_bytes_atomic(f"s3://{bucket}/audio2/other.wav", b"x", options=opts)  # sibling prefix
    boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1").put_object(
        Bucket=bucket, Key="audio/folder/", Body=b"")  # folder marker

    popts = make_opts(proxy.url)
    listed = list(storage.list_files(prefix, page_size=7, options=popts))
    assert listed == [f"{prefix}/{k}" for k in sorted(keys)]
    # 33 keys under audio/ (incl. the folder marker) in pages of 7 -> 5 list requests
    assert proxy.forwarded[("GET", f"/{bucket}")] == 5
    wavs = list(storage.list_files(prefix + "/", [".wav"], page_size=7, options=opts))
    assert wavs == [f"{prefix}/{k}" for k in sorted(keys) if k.endswith(".wav")] and len(wavs) == 30
    assert list(storage.list_files(f"s3://{bucket}/nothing-here", options=opts)) == []

    # local and S3 listings of the same tree come out in the same order
    for name in TRICKY_NAMES:
        storage.write_bytes_atomic(str(tmp_path / "t" / name), b"x")
        storage.write_bytes_atomic(f"s3://{bucket}/t/{name}", b"x", options=opts)
    local = [p[len(str(tmp_path / "t")) + 1:] for p in storage.list_files(str(tmp_path / "t"))]
    remote = [u[len(f"s3://{bucket}/t/"):] for u in storage.list_files(f"s3://{bucket}/t", page_size=3, options=opts)]
    assert local == remote == sorted(TRICKY_NAMES)
    local_wav = [p[len(str(tmp_path / "t")) + 1:] for p in storage.list_files(str(tmp_path / "t"), ["wav"])]
    assert local_wav == sorted(n for n in TRICKY_NAMES if n.lower().endswith(".wav"))
    assert list(storage.list_files(str(tmp_path / "t" / "a.wav"))) == [str(tmp_path / "t" / "a.wav")]
    with pytest.raises(MissingObjectError):
        list(storage.list_files(str(tmp_path / "missing")))


def test_open_text_streams_gzip_without_reading_everything(bucket: str, opts: S3Options, tmp_path: Path) -> None:
    lines = [f'{{"id": "{i}", "pad": "{os.urandom(48).hex()}"}}\n' for i in range(60_000)]
    blob = gzip.compress("".join(lines).encode(), compresslevel=1)
    assert len(blob) > 3 * (1 << 20)  # several MiB compressed: larger than any read buffer
    uri = f"s3://{bucket}/big.jsonl.gz"
    storage.write_bytes_atomic(uri, blob, options=opts)
    with storage.open_text(uri, options=opts) as f:
        assert f.readline() == lines[0]
        raw = f.buffer._owned.raw  # the S3 body reader under gzip + buffering
        assert raw._pos <= 2 * (1 << 20) < len(blob)  # only the first chunk(s) were fetched
        rest = list(f)
    assert rest == lines[1:]

    # gzip detected by magic bytes without a .gz suffix; plain text passes through
    storage.write_bytes_atomic(f"s3://{bucket}/nosuffix", gzip.compress(b"a\nb\n"), options=opts)
    with storage.open_text(f"s3://{bucket}/nosuffix", options=opts) as f:
        assert f.read() == "a\nb\n"
    local = tmp_path / "m.jsonl.gz"
    local.write_bytes(gzip.compress(b"x\ny\n"))
    with storage.open_text(str(local)) as f:
        assert list(f) == ["x\n", "y\n"]
    (tmp_path / "plain.txt").write_text("p\nq")
    with storage.open_text(str(tmp_path / "plain.txt")) as f:
        assert list(f) == ["p\n", "q"]


def test_missing_objects_are_clear_and_not_retried(bucket: str, proxy: FaultProxy, tmp_path: Path) -> None:
    popts = make_opts(proxy.url, max_attempts=5)
    uri = f"s3://{bucket}/no/such.wav"
    for call in (storage.read_bytes, storage.size, storage.open_text,
                 lambda u, options: storage.read_range(u, 0, 10, options=options)):
        with pytest.raises(MissingObjectError) as info:
            call(uri, options=popts)
        assert isinstance(info.value, FileNotFoundError)
        assert uri in str(info.value)
    # 4 calls -> exactly 4 requests: a 404 is final, never retried
    assert proxy.requests == 4
    with pytest.raises(MissingObjectError, match="no such bucket"):
        storage.read_bytes("s3://no-such-bucket-zz/k", options=popts)
    with pytest.raises(MissingObjectError):
        storage.read_bytes(str(tmp_path / "missing.wav"))
    with pytest.raises(FileNotFoundError):
        storage.open_text("file://" + str(tmp_path / "missing.txt"))
    with pytest.raises(StorageError, match="is a directory"):
        storage.read_bytes(str(tmp_path))


def test_atomic_local_write_never_shows_partial_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "part-0.parquet"
    old = b"A" * 2_000_000
    new = b"B" * 3_000_000
    storage.write_bytes_atomic(str(target), old)
    assert os.listdir(target.parent) == ["part-0.parquet"]  # no temp file left behind

    seen: set[tuple[int, bytes]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.add((len(data), data[:1] + data[-1:]))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(10):
            storage.write_bytes_atomic(str(target), new if i % 2 == 0 else old)
    finally:
        stop.set()
        thread.join()
    # every read saw one complete version, never a prefix or a mix
    assert seen <= {(len(old), b"AA"), (len(new), b"BB")}
    assert os.listdir(target.parent) == ["part-0.parquet"]

    # a failure before the rename keeps the old content and removes the temp file
    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    current = target.read_bytes()
    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(StorageError, match="No space left"):
        storage.write_bytes_atomic(str(target), b"C" * 10)
    assert target.read_bytes() == current
    assert os.listdir(target.parent) == ["part-0.parquet"]


_CHILD = """
import sys
from pipeline.io import storage
opts = storage.S3Options(endpoint_url=sys.argv[1], region="us-east-1", access_key_id="testing",
                         secret_access_key="testing")
path = storage.download_to_cache(sys.argv[2], sys.argv[3], sys.argv[4], options=opts)
print(path)
"""


def test_download_to_cache_verifies_and_reuses(bucket: str, proxy: FaultProxy, opts: S3Options,
                                               tmp_path: Path) -> None:
    data = os.urandom(2_500_000)
    digest = hashlib.sha256(data).hexdigest()
    uri = f"s3://{bucket}/models/pretrained.pt"
    storage.write_bytes_atomic(uri, data, options=opts)
    popts = make_opts(proxy.url)
    cache = tmp_path / "cache"
    key_path = f"/{bucket}/models/pretrained.pt"

    path = storage.download_to_cache(uri, cache, digest, options=popts)
    assert path.parent == cache and path.name.endswith("pretrained.pt")
    assert path.read_bytes() == data and proxy.gets(key_path) == 1
    # cached copy matches: reused, no second GET (with or without a checksum)
    assert storage.download_to_cache(uri, cache, "sha256:" + digest.upper(), options=popts) == path
    assert storage.download_to_cache(uri, cache, options=popts) == path
    assert proxy.gets(key_path) == 1

    # a corrupted cached copy is detected by its checksum and fetched again
    path.write_bytes(b"garbage")
    assert storage.download_to_cache(uri, cache, digest, options=popts).read_bytes() == data
    assert proxy.gets(key_path) == 2

    # wrong checksum: clear error naming the URI, nothing (not even a temp file) left behind
    other = f"s3://{bucket}/models/other.pt"
    storage.write_bytes_atomic(other, b"other", options=opts)
    with pytest.raises(ChecksumMismatchError) as info:
        storage.download_to_cache(other, cache, "0" * 64, options=popts)
    assert other in str(info.value) and hashlib.sha256(b"other").hexdigest() in str(info.value)
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [path.name]

    # concurrent processes and threads on one node: one download, intact file
    fresh = f"s3://{bucket}/models/shared.pt"
    storage.write_bytes_atomic(fresh, data, options=opts)
    cache2 = tmp_path / "cache2"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, proxy.url, fresh, str(cache2), digest],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        storage.download_to_cache(fresh, cache2, digest, options=popts))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    paths = {Path(o[0].strip()) for o in outs} | set(results)
    assert len(paths) == 1 and next(iter(paths)).read_bytes() == data
    assert proxy.gets(f"/{bucket}/models/shared.pt") == 1
    assert [p.name for p in cache2.iterdir() if not p.name.endswith(".lock")] == [next(iter(paths)).name]

    # local sources are cached (copied) too
    src = tmp_path / "local.bin"
    src.write_bytes(b"local-bytes")
    cached = storage.download_to_cache(str(src), cache, hashlib.sha256(b"local-bytes").hexdigest())
    assert cached.parent == cache and cached.read_bytes() == b"local-bytes"


def test_retries_recover_from_slowdown(bucket: str, opts: S3Options, proxy: FaultProxy) -> None:
    uri = f"s3://{bucket}/k.bin"
    data = os.urandom(50_000)
    storage.write_bytes_atomic(uri, data, options=opts)
    popts = make_opts(proxy.url, max_attempts=4)

    proxy.fail_next = 2
    assert storage.read_bytes(uri, options=popts) == data
    assert proxy.failed == 2 and proxy.gets(f"/{bucket}/k.bin") == 1

    proxy.fail_next = 1
    storage.write_bytes_atomic(f"s3://{bucket}/w.bin", b"written through faults", options=popts)
    assert storage.read_bytes(f"s3://{bucket}/w.bin", options=opts) == b"written through faults"

    proxy.fail_next = 1
    assert storage.size(uri, options=popts) == len(data)
    proxy.fail_next = 1
    assert len(list(storage.list_files(f"s3://{bucket}", options=popts))) == 2
    assert proxy.failed == 5


def test_truncated_bodies_are_resumed(bucket: str, opts: S3Options, proxy: FaultProxy) -> None:
    data = os.urandom(400_000)
    uri = f"s3://{bucket}/cut.bin"
    storage.write_bytes_atomic(uri, data, options=opts)
    popts = make_opts(proxy.url, max_attempts=4)

    proxy.truncate_next_gets = 2
    assert storage.read_bytes(uri, options=popts) == data
    assert proxy.truncated == 2
    assert proxy.gets(f"/{bucket}/cut.bin") == 3  # first GET + two resumed ranged GETs

    lines = "".join(f"line {i}\n" for i in range(50_000))
    gz = f"s3://{bucket}/lines.txt.gz"
    storage.write_bytes_atomic(gz, gzip.compress(lines.encode()), options=opts)
    proxy.truncate_next_gets = 1
    with storage.open_text(gz, options=popts) as f:
        assert f.read() == lines
    assert proxy.truncated == 3

    # a body that keeps breaking without progress exhausts the attempts: StorageError naming the URI
    proxy.truncate_next_gets = 100
    proxy.truncate_keep = 0.0
    with pytest.raises(StorageError, match="after 4 attempts") as info:
        storage.read_bytes(uri, options=popts)
    assert uri in str(info.value)
    proxy.truncate_next_gets = 0


def test_permanent_failures_end_in_storage_error_quickly(bucket: str, proxy: FaultProxy) -> None:
    uri = f"s3://{bucket}/any.bin"
    proxy.fail_always = True
    popts = make_opts(proxy.url, max_attempts=3)
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.read_bytes(uri, options=popts)
    elapsed = time.monotonic() - start
    assert not isinstance(info.value, MissingObjectError)
    assert uri in str(info.value) and "SlowDown" in str(info.value)
    assert proxy.failed == 3  # exactly max_attempts tries
    # throttling backoff: rand(0,1)*1 s then rand(0,1)*2 s at most
    assert elapsed < 6.0

    dead = make_opts(f"http://127.0.0.1:{free_port()}", max_attempts=3, connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError, match="S3 request failed") as info:
        storage.read_bytes(uri, options=dead)
    assert uri in str(info.value)
    assert time.monotonic() - start < 6.0
    with pytest.raises(StorageError):
        list(storage.list_files(f"s3://{bucket}/", options=dead))


def test_options_from_env_and_default_client(endpoint: str, bucket: str, opts: S3Options,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AWS_ENDPOINT_URL": "http://example:9000", "AWS_REGION": "eu-west-1", "AWS_PROFILE": "p",
           "AWS_MAX_ATTEMPTS": "3"}
    o = S3Options.from_env(env)
    assert (o.endpoint_url, o.region, o.profile, o.max_attempts) == ("http://example:9000", "eu-west-1", "p", 3)
    assert S3Options.from_env({"AWS_ENDPOINT_URL": "a", "AWS_ENDPOINT_URL_S3": "b"}).endpoint_url == "b"
    assert S3Options.from_env({}).endpoint_url is None
    assert "secret" not in repr(S3Options(secret_access_key="secret"))

    # no options given: the environment decides (as on a Ray worker)
    storage.write_bytes_atomic(f"s3://{bucket}/env.txt", b"via env", options=opts)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert storage.read_bytes(f"s3://{bucket}/env.txt") == b"via env"

    # one client per process and options, shared by threads
    clients: list[object] = []
    threads = [threading.Thread(target=lambda: clients.append(storage.s3_client(make_opts(endpoint, region="x-1"))))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clients}) == 1
    assert storage.s3_client(make_opts(endpoint, region="x-2")) is not clients[0]


def test_model_directory_picks_the_same_checkpoint_locally_and_on_s3(bucket: str, opts: S3Options, tmp_path: Path) -> None:
    """One checkpoint picker for local directories and S3 listings: the highest epoch number wins
    (epoch-40.pt over epoch-30-avg-10.pt, which sorting by all digits would pick)."""
    from model.checkpoint import find_checkpoint
    from pipeline.io.model_store import local_model_dir

    names = ["epoch-9.pt", "epoch-30-avg-10.pt", "epoch-40.pt", "bpe.model"]
    local = tmp_path / "model"
    local.mkdir()
    client = boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1")
    for name in names:
        (local / name).write_bytes(name.encode())
        client.put_object(Bucket=bucket, Key=f"models/m/{name}", Body=name.encode())
    assert find_checkpoint(local).name == "epoch-40.pt"
    storage.set_default_s3_options(opts)
    try:
        fetched = local_model_dir(f"s3://{bucket}/models/m", cache_dir=tmp_path / "cache")
    finally:
        storage.set_default_s3_options(None)
    assert sorted(p.name for p in fetched.iterdir()) == ["bpe.model", "epoch-40.pt"]  # only the chosen checkpoint
    assert (fetched / "epoch-40.pt").read_bytes() == b"epoch-40.pt"


GLOB_KEYS = ["cuts/cuts.000000.jsonl.gz", "cuts/cuts.000001.jsonl.gz", "cuts/cuts.000010.jsonl.gz",
             "cuts/recording.000000.tar", "cuts/sub/cuts.000002.jsonl.gz", "cuts/cuts.x/y.jsonl.gz", "other/cuts.9.jsonl",
             "cuts.000003.jsonl.gz"]


@pytest.mark.parametrize("pattern, expected", [
    ("cuts/cuts.*.jsonl.gz", ["cuts/cuts.000000.jsonl.gz", "cuts/cuts.000001.jsonl.gz", "cuts/cuts.000010.jsonl.gz"]),
    ("cuts/cuts.00000?.jsonl.gz", ["cuts/cuts.000000.jsonl.gz", "cuts/cuts.000001.jsonl.gz"]),
    ("cuts/cuts.00000[!0].jsonl.gz", ["cuts/cuts.000001.jsonl.gz"]),
    ("cuts/cuts.0000[0-0]0.jsonl.gz", ["cuts/cuts.000000.jsonl.gz"]),
    ("*/cuts.*", ["cuts/cuts.000000.jsonl.gz", "cuts/cuts.000001.jsonl.gz", "cuts/cuts.000010.jsonl.gz",
                  "other/cuts.9.jsonl"]),
    ("cuts/**/cuts.*.jsonl.gz", ["cuts/cuts.000000.jsonl.gz", "cuts/cuts.000001.jsonl.gz", "cuts/cuts.000010.jsonl.gz",
                                 "cuts/sub/cuts.000002.jsonl.gz"]),
    ("cuts/*/y.jsonl.gz", ["cuts/cuts.x/y.jsonl.gz"]),
    ("nothing/*.gz", []),
])
def test_glob_matches_the_same_files_locally_and_on_s3(pattern, expected, bucket, opts, tmp_path):
    """``*``, ``?`` and ``[...]`` stay within a segment, ``**`` crosses them, as in a shell; S3 and
    local paths agree, in key order."""
    for key in GLOB_KEYS:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
        storage.write_bytes_atomic(f"s3://{bucket}/{key}", b"x", options=opts)
    assert storage.glob(str(tmp_path / pattern)) == [str(tmp_path / k) for k in expected]
    assert storage.glob(f"s3://{bucket}/{pattern}", options=opts) == [f"s3://{bucket}/{k}" for k in expected]
    assert storage.has_glob(pattern) and not storage.has_glob(f"s3://{bucket}/cuts/a.jsonl.gz")


def test_a_glob_on_s3_lists_only_under_its_literal_prefix(bucket, proxy, opts):
    """A bucket of many audio files is not listed to find a few manifests: one listing request of
    the keys beginning ``corpus/cuts.``."""
    for i in range(30):
        storage.write_bytes_atomic(f"s3://{bucket}/corpus/audio-{i:03d}.wav", b"x", options=opts)
    storage.write_bytes_atomic(f"s3://{bucket}/corpus/cuts.000000.jsonl.gz", b"x", options=opts)
    listed = make_opts(proxy.url)
    before = proxy.requests
    found = storage.glob(f"s3://{bucket}/corpus/cuts.*.jsonl.gz", options=listed)
    assert found == [f"s3://{bucket}/corpus/cuts.000000.jsonl.gz"] and proxy.requests - before == 1


@pytest.mark.parametrize("where", ["s3", "local"])
def test_range_file_reads_only_what_is_read(where, bucket, opts, tmp_path, proxy):
    """A seekable file over an object: the head comes with the open; a jump fetches a small range,
    sequential reads grow the read-ahead, a small step back is served from what was fetched, the
    read-ahead stops at the prefetch limit; a window of the object reads as a file of its own."""
    data = os.urandom(3 << 20)
    uri, ropts = stored(where, "blob.bin", data, bucket, opts, tmp_path, proxy)
    with storage.open_range(uri, options=ropts) as f:
        assert f.size == len(data) and f.read(100) == data[:100]
        head = f.bytes_fetched
        assert head == storage.RangeFile.MIN_READAHEAD
        f.seek(2 << 20)
        assert f.read(10) == data[2 << 20:(2 << 20) + 10]
        assert f.bytes_fetched == head + storage.RangeFile.MIN_READAHEAD  # a jump: one small range
        got = b"".join(f.read(8192) for _ in range(80))  # 640 KiB on: read-ahead doubles
        assert got == data[(2 << 20) + 10:(2 << 20) + 10 + 80 * 8192]
        requests = f.requests
        assert requests <= 2 + 4  # 64 K, 128 K, 256 K, 512 K: not 80 requests
        f.seek(-4096, os.SEEK_CUR)
        assert f.read(4096) == data[(2 << 20) + 10 + 80 * 8192 - 4096:(2 << 20) + 10 + 80 * 8192]
        assert f.requests == requests  # a step back: served from what was fetched
        f.seek(1 << 20)
        f.prefetch_limit = (1 << 20) + 1000
        assert f.read(10) == data[1 << 20:(1 << 20) + 10]
        assert f.requests == requests + 1 and f.bytes_fetched <= head + (1 << 20) + 2 * (1 << 20)
        f.seek(len(data) - 5)
        assert f.read(100) == data[-5:] and f.read(10) == b""
        fetched = f.bytes_fetched
    if where == "s3":
        assert proxy.got_bytes(f"/{bucket}/blob.bin") == fetched  # the count is what the store served
    with storage.open_range(uri, base=1000, length=5000, options=ropts) as window:
        assert window.size == 5000 and window.read() == data[1000:6000] and window.bytes_fetched == 5000

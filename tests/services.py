"""A real Ray head for end-to-end tests (moto S3 lives in ``s3_testing``).

``RayHead``: ``ray start --head`` with token authentication, its own temp dir
and ports; stopping kills only the processes of this head (``ray stop`` would
kill every Ray process of the user). ``make test`` runs the suite in a private
network namespace (``tests/isolated.sh``), where Ray's listeners reach only
the namespace's loopback. Tests find the processes of actors and running tasks
through Ray's state API (:meth:`RayHead.actors`, :meth:`RayHead.running_tasks`)
and kill them from outside, the way a crash or an OOM kill would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from s3_testing import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


#: What `ray job submit --working-dir <repo>` leaves out: the venv, git, and generated data
#: (corpora, demo audio and outputs, training checkpoints).
JOB_EXCLUDES = [".venv", ".git", "demo-output", "/demo-data", "/data", "/model/assets/demo-work"]


def _runtime_env(extra_env: dict | None) -> dict:
    return {"env_vars": extra_env or {}, "excludes": JOB_EXCLUDES}


#: the process name Ray Data gives the model stage's actors
MODEL_ACTOR = "MapWorker(MapBatches(ShardTranscriber))"


def list_state(dashboard: str, kind: str, *filters: str, env: Optional[dict[str, str]] = None) -> list[dict]:
    """``ray list <kind> --detail`` through a dashboard (Ray's state API): actors, tasks, nodes."""
    import json

    cmd = [str(BIN / "ray"), "list", kind, "--address", dashboard, "--format", "json", "--detail"]
    for f in filters:
        cmd += ["--filter", f]
    out = subprocess.run(cmd, env=env if env is not None else dict(os.environ, RAY_AUTH_MODE="disabled"),
                         capture_output=True, text=True, timeout=60)
    text = out.stdout.strip()
    if out.returncode != 0:
        raise RuntimeError(f"ray list {kind} failed: {out.stderr[-2000:]}")
    return json.loads(text) if text.startswith("[") else []  # "No resource in the cluster" when empty


def pid_holding(pid: int, client_port: int) -> bool:
    """Whether process ``pid`` owns the TCP connection from local port ``client_port``."""
    import psutil

    try:
        return any(c.laddr and c.laddr.port == client_port for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.NoSuchProcess:
        return False


def kill_actor_holding(actors: list[dict], client_port: int) -> int:
    """SIGKILL the one actor among ``actors`` (Ray state API rows) whose process owns the TCP
    connection from local port ``client_port``; returns its pid."""
    for actor in actors:
        if pid_holding(actor["pid"], client_port):
            os.kill(actor["pid"], signal.SIGKILL)
            return actor["pid"]
    raise AssertionError(f"no actor among {[a['pid'] for a in actors]} holds a connection from port {client_port}")


def stop_processes(temp_dir: str, port: int) -> None:
    """Stop every process of one Ray cluster (command line naming its temp dir or GCS port) and their
    children: ``ray stop`` would kill every Ray process of the user."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if temp_dir in cmdline or re.search(rf":{port}\b", cmdline):
            roots.append(proc)
    victims = {p.pid: p for p in roots}
    for proc in roots:  # agents and workers rename themselves (ray::...): take whole trees
        try:
            victims.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    procs = list(victims.values())
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


class FakeAutoscalingCluster:
    """A Ray head with Ray's ``fake_multinode`` autoscaler: worker "nodes" (local raylets) are
    launched when work asks for resources no node has, up to ``max_workers`` of one type, and
    start at zero. The resources they declare (GPUs included) are made up. Started with its own
    temp dir and ports, stopped by those (never ``ray stop``)."""

    def __init__(self, worker_resources: dict[str, float], max_workers: int):
        self.temp_dir = tempfile.mkdtemp(prefix="zsas", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        config = {
            "cluster_name": "zipscribe-test", "max_workers": max_workers, "idle_timeout_minutes": 5,
            "upscaling_speed": 1.0,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                "worker": {"resources": {**worker_resources, "object_store_memory": 200_000_000}, "node_config": {},
                           "min_workers": 0, "max_workers": max_workers}},
            "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }
        self.config = Path(self.temp_dir) / "autoscaling.json"
        self.config.write_text(json.dumps(config))

    def __enter__(self) -> "FakeAutoscalingCluster":
        env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled",
                   RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        env.pop("RAY_ADDRESS", None)
        cmd = [str(BIN / "ray"), "start", "--head", f"--autoscaling-config={self.config}", "--port", str(self.port),
               "--num-cpus", "0", "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir,
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", self.dashboard.rsplit(":", 1)[1], "--disable-usage-stats", *own_ports()]
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120, start_new_session=True)
        return self

    def actors(self, class_name: str, state: str = "ALIVE") -> list[dict]:
        return list_state(self.dashboard, "actors", f"class_name={class_name}", f"state={state}")

    def __exit__(self, *exc: object) -> None:
        stop_processes(self.temp_dir, self.port)


def own_ports(metrics_port: Optional[int] = None) -> list[str]:
    """``ray start`` flags giving a head's agents free ports of their own: their defaults (52365 for
    the dashboard agent, 10001 for the client server, ...) are one per machine, so a second Ray on
    the machine (another suite, a developer's) would leave this head without a job agent ("No
    available agent to submit job"). ``metrics_port``: the Prometheus export port to use (default:
    any free one)."""
    flags = []
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--ray-client-server-port"):
        flags += [flag, str(free_port())]
    return flags + ["--metrics-export-port", str(metrics_port or free_port())]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RayHead:
    """A single-node Ray cluster for one test session."""

    def __init__(self, num_cpus: int = 2, env: Optional[dict[str, str]] = None, findable: bool = False):
        """``findable``: the head is started as a user's ``ray start`` is, without ``--temp-dir``, with
        ``RAY_TMPDIR`` (in :attr:`env`) set to its own folder: a process with the same ``RAY_TMPDIR``
        finds it as ``ray.init()`` finds a running Ray, and no other process on the machine does."""
        self.temp_dir = tempfile.mkdtemp(prefix="zsray", dir="/tmp")  # short: Ray's unix sockets live here
        self.findable = findable
        self.port = free_port()
        self.dashboard_port = free_port()
        self.metrics_port = free_port()  # the node's Prometheus endpoint: http://127.0.0.1:<metrics_port>/metrics
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.token = secrets.token_hex(16)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            PATH=f"{BIN}:{self.env.get('PATH', '')}",
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("RAY_ADDRESS", None)
        if findable:
            self.env["RAY_TMPDIR"] = self.temp_dir
        self.num_cpus = num_cpus

    def start(self) -> "RayHead":
        cmd = [
            str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
            "--num-cpus", str(self.num_cpus), "--num-gpus", "0", "--disable-usage-stats",
            *own_ports(self.metrics_port),
            *([] if self.findable else ["--temp-dir", self.temp_dir]),
        ]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=120)
        deadline = time.time() + 60
        while time.time() < deadline:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", self.address], env=self.env,
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                return self
            time.sleep(1)
        raise RuntimeError(f"Ray dashboard did not come up: {probe.stderr.decode()[-2000:]}")

    def submit(self, args: list[str], extra_env: Optional[dict[str, str]] = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir <repo> -- python jobs/...``; waits for the job."""
        import json

        runtime_env = _runtime_env(extra_env)
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.address, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--", "python", *args]
        return self._until_accepted(lambda: subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                                           timeout=timeout))

    @staticmethod
    def _until_accepted(submit, wait: float = 120.0) -> subprocess.CompletedProcess:
        """Submit until the head takes the job: right after ``ray start`` its job agent may not be up
        yet ("No available agent to submit job", a 500 before the job exists), the more so on a
        busy machine. Any other answer is returned as it is."""
        deadline = time.time() + wait
        while True:
            proc = submit()
            if proc.returncode == 0 or "No available agent to submit job" not in proc.stderr or time.time() > deadline:
                return proc
            time.sleep(2)

    def submit_no_wait(self, args: list[str], extra_env: Optional[dict[str, str]] = None) -> str:
        """Submit without waiting; returns the job's submission id."""
        import json
        import re as _re

        runtime_env = _runtime_env(extra_env)
        cmd = [str(BIN / "ray"), "job", "submit", "--no-wait", "--address", self.address, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--", "python", *args]
        out = self._until_accepted(lambda: subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120))
        out.check_returncode()
        return _re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)

    def job_status(self, job_id: str) -> str:
        out = subprocess.run([str(BIN / "ray"), "job", "status", "--address", self.address, job_id], env=self.env,
                             capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr

    def stop_job(self, job_id: str) -> None:
        subprocess.run([str(BIN / "ray"), "job", "stop", "--address", self.address, job_id], env=self.env,
                       capture_output=True, text=True, timeout=120)

    def actors(self, class_name: str, state: str = "ALIVE") -> list[dict]:
        """Actors of a class in a state (``pid``, ``node_id``, ``actor_id`` ...)."""
        return list_state(self.address, "actors", f"class_name={class_name}", f"state={state}", env=self.env)

    def kill_holder(self, client_port: int, class_name: str = MODEL_ACTOR) -> int:
        """SIGKILL the actor (of ``class_name``, from Ray's state API) whose process holds the TCP
        connection from local port ``client_port`` (a request a proxy is holding); returns its pid."""
        return kill_actor_holding(self.actors(class_name), client_port)

    def stop(self) -> None:
        stop_processes(self.temp_dir, self.port)


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1 (a free port, its own temp storage), scraping
    ``targets`` (``host:port`` of Ray nodes' metrics export ports) every ``interval`` seconds;
    stopped by its pid. :meth:`query` and :meth:`query_range` ask its HTTP API."""

    def __init__(self, targets: list[str], interval: float = 1.0):
        self.dir = Path(tempfile.mkdtemp(prefix="zsprom"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": f"{interval:g}s", "scrape_timeout": f"{interval:g}s"},
                  "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}]}
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Prometheus":
        log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.dir / 'data'}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._ready(), 60, "prometheus to be ready", interval=0.2)
        return self

    def _ready(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        import urllib.parse
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        """An instant query: ``{((label, value), ...): value}`` of each series."""
        return {tuple(sorted(s["metric"].items())): float(s["value"][1])
                for s in self.api("query", query=expr)["result"]}

    def value(self, expr: str) -> Optional[float]:
        """The single value of an instant query that gives one series (None: none yet)."""
        got = list(self.query(expr).values())
        assert len(got) <= 1, got
        return got[0] if got else None

    def names(self) -> set[str]:
        """Every metric name Prometheus has samples of."""
        return set(self.api("label/__name__/values"))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

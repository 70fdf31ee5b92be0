"""infra/: the container image recipe, the KubeRay / Kubernetes manifests and the local cluster
scripts, checked as far as a machine without Docker or Kubernetes allows.

* Every YAML parses; the Kubernetes objects carry the fields their kinds require and only field
  names those kinds know (a small schema of the fields used here: a typo fails).
* Manifests agree with each other and with the image: image names and tags, Ray version,
  entry-point scripts, the model cache path, the token Secret, the head service address.
* Ray topology: the head takes no work (num-cpus "0", no GPU), GPUs only in worker groups,
  /dev/shm from a memory emptyDir on every Ray pod, sane autoscaling bounds.
* No credentials inline: only secretKeyRef / envFrom secretRef (Kubernetes) or ${VAR} (compose).
* The job arguments in the manifests go through the real argument parsers of jobs/transcribe.py,
  jobs/evaluate.py and infra/k8s/ensure_resources.py; the nightly CronJob's shell script runs
  against a stand-in `ray` to show what it submits and that a failed Ray job fails the pod.
* The Dockerfile installs with the Makefile (`make system-deps`, `make install`), not with a
  second recipe.
* infra/local/up.sh and down.sh run for real: a Ray head with token auth and moto S3 on
  127.0.0.1, jobs submitted through them, then everything up.sh started is stopped and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent

# Values for the manifests' ${PLACEHOLDERS} (what a user would export before envsubst).
SAMPLE_VALUES = {
    "RUN_ID": "batch-2026-11-25",
    "MANIFEST": "s3://asr-data/in/cuts.jsonl.gz",
    "MODEL": "s3://asr-data/models/zf-m",
    "OUTPUT": "s3://asr-data/asr-out",
    "EVAL_ROOT": "s3://asr-data/asr-eval",
}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
GPU = "nvidia.com/gpu"


# --------------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def load_docs(path: Path, values: dict[str, str] | None = None) -> list[dict]:
    text = path.read_text()
    if values is not None:
        text = substitute(text, values)
    return [d for d in yaml.safe_load_all(text) if d is not None]


def substitute(text: str, values: dict[str, str]) -> str:
    """What the documented `envsubst '${A} ${B}'` does: replace only the named variables, as
    ${NAME} or $NAME; every other $ stays (shell variables of the CronJob's script)."""
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", repl, text)


def declared_placeholders(text: str) -> set[str]:
    m = re.search(r"^# Placeholders:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


@lru_cache(maxsize=None)
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for instr, rest in dockerfile():
        if instr == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name, value.strip('"'))
    return args


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, rest in dockerfile():
        if instr == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def workdir() -> str:
    return [rest for instr, rest in dockerfile() if instr == "WORKDIR"][-1]


def image_names() -> dict[str, str]:
    """{'gpu': 'repo:version-gpu', 'cpu': ...} from the Dockerfile's `# image:` line and pyproject."""
    m = re.search(r"^# image: (\S+):\{version\}-\{flavor\}$", DOCKERFILE.read_text(), re.M)
    assert m, "infra/docker/Dockerfile must document its image name as '# image: REPO:{version}-{flavor}'"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return {flavor: f"{m.group(1)}:{version}-{flavor}" for flavor in ("gpu", "cpu")}


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {name} ?= ..."
    return m.group(1).strip()


def all_k8s_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in k8s_files() for doc in load_docs(path, SAMPLE_VALUES)]


def docs_of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in all_k8s_docs() if d.get("kind") == kind]


def the_raycluster() -> dict:
    (_, doc), = docs_of_kind("RayCluster")
    return doc


def ray_cluster_specs() -> Iterator[tuple[str, dict]]:
    """Every Ray cluster spec: the RayCluster's and each RayJob's rayClusterSpec."""
    for path, doc in all_k8s_docs():
        if doc["kind"] == "RayCluster":
            yield f"{path.name}:{doc['metadata']['name']}", doc["spec"]
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            yield f"{path.name}:{doc['metadata']['name']}.rayClusterSpec", doc["spec"]["rayClusterSpec"]


def pod_templates() -> Iterator[tuple[str, str, dict]]:
    """(where, role, pod spec) for every pod the manifests describe; role: head / worker / other."""
    for where, spec in ray_cluster_specs():
        yield where, "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{where}.{group['groupName']}", "worker", group["template"]["spec"]
    for path, doc in all_k8s_docs():
        if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
            yield f"{path.name}:submitter", "other", doc["spec"]["submitterPodTemplate"]["spec"]
        if doc["kind"] == "CronJob":
            yield f"{path.name}:{doc['metadata']['name']}", "other", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod: dict) -> list[dict]:
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def gpu_count(container: dict) -> float:
    res = container.get("resources", {})
    return max(float(res.get("limits", {}).get(GPU, 0)), float(res.get("requests", {}).get(GPU, 0)))


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


# --------------------------------------------------------------------------------------------
# The real argument parsers
# --------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def load_script(relpath: str):
    path = REPO / relpath
    if not path.exists():
        pytest.fail(f"{relpath} does not exist: the manifests run it (its parser cannot be checked)")
    name = "infra_test_" + re.sub(r"\W", "_", relpath)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "build_parser"), f"{relpath} has no build_parser()"
    return module


def parse_with_real_parser(script: str, argv: list[str]):
    """argparse of the script the command runs; argparse's exit on a bad flag becomes a failure."""
    parser = load_script(script).build_parser()
    # argparse accepts unambiguous abbreviations (--gpus-per-acto); a manifest must spell
    # every option in full, so a truncated flag fails here too.
    known = set(parser._option_string_actions)
    for token in argv:
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            pytest.fail(f"{script} rejects the arguments in the manifest: {token} is not one of its options")
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{script} rejects the arguments in the manifest (exit {exc.code}): {shlex.join(argv)}")


def repo_script(path_in_image: str) -> str:
    """/home/ray/zipscribe/jobs/x.py -> jobs/x.py (the image's WORKDIR is the repository)."""
    prefix = workdir().rstrip("/") + "/"
    assert path_in_image.startswith(prefix), f"{path_in_image}: scripts run from the image's {prefix}"
    rel = path_in_image[len(prefix):]
    assert (REPO / rel).is_file(), f"{path_in_image} names {rel}, which is not in the repository"
    return rel


def python_command(tokens: list[str]) -> tuple[str, list[str]]:
    """(script, args) of an entrypoint `python SCRIPT ARGS`. One command, no shell operators:
    KubeRay's submitter and Ray's CLI pass the entrypoint through a shell each (the CLI quotes
    every token with shlex.join), so `a && b` would not do what it says."""
    for tok in tokens:
        assert tok not in ("&&", "||", ";", "|", "&"), f"shell operator {tok!r} in an entrypoint: {shlex.join(tokens)}"
    assert tokens[0] in ("python", "python3"), f"entrypoint is not `python SCRIPT ...`: {shlex.join(tokens)}"
    return repo_script(tokens[1]), tokens[2:]


# --------------------------------------------------------------------------------------------
# YAML and the fields of each kind
# --------------------------------------------------------------------------------------------

def test_every_yaml_file_parses():
    files = yaml_files()
    assert {p.name for p in files} >= {"raycluster.yaml", "rayjob-transcribe.yaml", "nightly-evaluate.yaml", "compose.yaml"}
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: every document is a mapping"
        # and after filling in the placeholders
        for doc in load_docs(path, SAMPLE_VALUES):
            assert isinstance(doc, dict)


REQUIRES_SPEC = {"RayCluster", "RayJob", "CronJob", "Job", "Deployment"}


def test_kubernetes_objects_have_required_fields():
    kinds = set()
    for path, doc in all_k8s_docs():
        where = f"{path.name}:{doc.get('kind')}"
        for field in ("apiVersion", "kind", "metadata"):
            assert field in doc, f"{where}: no {field}"
        name = doc["metadata"].get("name")
        assert name and DNS1123.fullmatch(name) and len(name) <= 63, f"{where}: metadata.name {name!r} is not a DNS-1123 name"
        if doc["kind"] in REQUIRES_SPEC:
            assert isinstance(doc.get("spec"), dict), f"{where}: no spec"
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1", where
        kinds.add(doc["kind"])
    assert {"RayCluster", "RayJob", "CronJob"} <= kinds

    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert isinstance(head["rayStartParams"], dict), where
        assert all(isinstance(v, str) for v in head["rayStartParams"].values()), f"{where}: rayStartParams values are strings"
        assert head["template"]["spec"]["containers"], where
        assert spec["workerGroupSpecs"], f"{where}: no worker group"
        for group in spec["workerGroupSpecs"]:
            g = f"{where}.{group.get('groupName')}"
            for field in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
                assert field in group, f"{g}: no {field}"
            assert all(isinstance(group[f], int) for f in ("replicas", "minReplicas", "maxReplicas")), g
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{g}: min <= replicas <= max"
            assert group["template"]["spec"]["containers"], g

    for path, job in docs_of_kind("RayJob"):
        spec, where = job["spec"], f"{path.name}:RayJob"
        assert isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip(), f"{where}: entrypoint"
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), f"{where}: rayClusterSpec or clusterSelector"
        assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: shutdownAfterJobFinishes"
        assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0, where
        assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0, where
        assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 0, where
        # The head advertises num-cpus 0, so an entrypoint that reserves CPUs would never start.
        assert not spec.get("entrypointNumCpus") and not spec.get("entrypointNumGpus"), f"{where}: entrypoint must reserve nothing"
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode"), where
        if "submitterPodTemplate" in spec:
            assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never", where

    for path, cron in docs_of_kind("CronJob"):
        spec, where = cron["spec"], f"{path.name}:CronJob"
        assert cron["apiVersion"] == "batch/v1", where
        fields = spec["schedule"].split()
        assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields), f"{where}: schedule {spec['schedule']!r}"
        assert spec.get("concurrencyPolicy") == "Forbid", f"{where}: two nights must not overlap"
        job = spec["jobTemplate"]["spec"]
        assert job.get("backoffLimit") == 0, f"{where}: a failed gate must fail the Job, not retry it"
        assert isinstance(job.get("activeDeadlineSeconds"), int), where
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and pod["containers"], where


# A schema of the Kubernetes / KubeRay fields these manifests use (ray.io/v1 of KubeRay 1.6,
# batch/v1, core/v1). Unknown keys are typos until this table says otherwise.
S = dict
SCHEMA: dict[str, dict[str, str | None]] = {
    "ObjectMeta": S(name=None, namespace=None, labels=None, annotations=None, generateName=None),
    "ServiceAccount": S(apiVersion=None, kind=None, metadata="ObjectMeta", automountServiceAccountToken=None,
                        imagePullSecrets=None, secrets=None),
    "RayCluster": S(apiVersion=None, kind=None, metadata="ObjectMeta", spec="RayClusterSpec"),
    "RayClusterSpec": S(rayVersion=None, authOptions="AuthOptions", enableInTreeAutoscaling=None,
                        autoscalerOptions="AutoscalerOptions", headGroupSpec="HeadGroupSpec",
                        workerGroupSpecs="[WorkerGroupSpec]", suspend=None, headServiceAnnotations=None,
                        gcsFaultToleranceOptions=None, managedBy=None, upgradeStrategy=None),
    "AuthOptions": S(mode=None, secretName=None, enableK8sTokenAuth=None),
    "AutoscalerOptions": S(upscalingMode=None, idleTimeoutSeconds=None, resources="Resources", image=None,
                           imagePullPolicy=None, env="[EnvVar]", envFrom="[EnvFrom]", volumeMounts="[VolumeMount]",
                           securityContext="SecurityContext", version=None),
    "HeadGroupSpec": S(serviceType=None, rayStartParams=None, template="PodTemplate", headService=None, enableIngress=None),
    "WorkerGroupSpec": S(groupName=None, replicas=None, minReplicas=None, maxReplicas=None, rayStartParams=None,
                         template="PodTemplate", numOfHosts=None, scaleStrategy=None, suspend=None, idleTimeoutSeconds=None),
    "RayJob": S(apiVersion=None, kind=None, metadata="ObjectMeta", spec="RayJobSpec"),
    "RayJobSpec": S(entrypoint=None, runtimeEnvYAML=None, rayClusterSpec="RayClusterSpec", clusterSelector=None,
                    shutdownAfterJobFinishes=None, ttlSecondsAfterFinished=None, activeDeadlineSeconds=None,
                    backoffLimit=None, submissionMode=None, submitterPodTemplate="PodTemplate", submitterConfig=None,
                    entrypointNumCpus=None, entrypointNumGpus=None, entrypointResources=None, jobId=None,
                    metadata=None, suspend=None, deletionStrategy=None, managedBy=None),
    "CronJob": S(apiVersion=None, kind=None, metadata="ObjectMeta", spec="CronJobSpec"),
    "CronJobSpec": S(schedule=None, timeZone=None, concurrencyPolicy=None, startingDeadlineSeconds=None,
                     successfulJobsHistoryLimit=None, failedJobsHistoryLimit=None, suspend=None, jobTemplate="JobTemplate"),
    "JobTemplate": S(metadata="ObjectMeta", spec="JobSpec"),
    "JobSpec": S(backoffLimit=None, activeDeadlineSeconds=None, ttlSecondsAfterFinished=None, template="PodTemplate",
                 completions=None, parallelism=None, podFailurePolicy=None),
    "PodTemplate": S(metadata="ObjectMeta", spec="PodSpec"),
    "PodSpec": S(containers="[Container]", initContainers="[Container]", volumes="[Volume]", serviceAccountName=None,
                 automountServiceAccountToken=None, securityContext="PodSecurityContext", tolerations="[Toleration]",
                 restartPolicy=None, terminationGracePeriodSeconds=None, nodeSelector=None, affinity=None,
                 imagePullSecrets=None, priorityClassName=None),
    "PodSecurityContext": S(runAsNonRoot=None, runAsUser=None, runAsGroup=None, fsGroup=None, seccompProfile=None,
                            supplementalGroups=None),
    "Container": S(name=None, image=None, imagePullPolicy=None, command=None, args=None, env="[EnvVar]",
                   envFrom="[EnvFrom]", ports="[ContainerPort]", resources="Resources", volumeMounts="[VolumeMount]",
                   securityContext="SecurityContext", workingDir=None, readinessProbe=None, livenessProbe=None,
                   lifecycle=None),
    "EnvVar": S(name=None, value=None, valueFrom="EnvVarSource"),
    "EnvVarSource": S(secretKeyRef="KeySelector", configMapKeyRef="KeySelector", fieldRef=None, resourceFieldRef=None),
    "KeySelector": S(name=None, key=None, optional=None),
    "EnvFrom": S(secretRef="EnvSource", configMapRef="EnvSource", prefix=None),
    "EnvSource": S(name=None, optional=None),
    "ContainerPort": S(containerPort=None, name=None, protocol=None, hostPort=None),
    "Resources": S(requests=None, limits=None, claims=None),
    "VolumeMount": S(name=None, mountPath=None, readOnly=None, subPath=None),
    "Volume": S(name=None, emptyDir="EmptyDir", secret=None, configMap=None, persistentVolumeClaim=None, hostPath=None,
                projected=None),
    "EmptyDir": S(medium=None, sizeLimit=None),
    "SecurityContext": S(allowPrivilegeEscalation=None, readOnlyRootFilesystem=None, runAsNonRoot=None, runAsUser=None,
                         runAsGroup=None, capabilities=None, privileged=None, seccompProfile=None),
    "Toleration": S(key=None, operator=None, value=None, effect=None, tolerationSeconds=None),
    # Prometheus Operator monitoring.coreos.com/v1
    "ServiceMonitor": S(apiVersion=None, kind=None, metadata="ObjectMeta", spec="ServiceMonitorSpec"),
    "ServiceMonitorSpec": S(jobLabel=None, selector="LabelSelector", namespaceSelector=None, endpoints="[Endpoint]",
                            targetLabels=None, podTargetLabels=None),
    "PodMonitor": S(apiVersion=None, kind=None, metadata="ObjectMeta", spec="PodMonitorSpec"),
    "PodMonitorSpec": S(jobLabel=None, selector="LabelSelector", namespaceSelector=None,
                        podMetricsEndpoints="[Endpoint]", podTargetLabels=None),
    "LabelSelector": S(matchLabels=None, matchExpressions=None),
    "Endpoint": S(port=None, path=None, interval=None, scrapeTimeout=None, scheme=None, relabelings="[Relabeling]",
                  metricRelabelings="[Relabeling]", honorLabels=None),
    "Relabeling": S(sourceLabels=None, targetLabel=None, regex=None, replacement=None, action=None, separator=None),
}


def check_schema(node: Any, type_name: str, where: str) -> None:
    if type_name.startswith("["):
        assert isinstance(node, list), f"{where}: expected a list"
        for i, item in enumerate(node):
            check_schema(item, type_name[1:-1], f"{where}[{i}]")
        return
    assert isinstance(node, dict), f"{where}: expected a mapping ({type_name})"
    fields = SCHEMA[type_name]
    for key, value in node.items():
        assert key in fields, f"{where}: unknown field {key!r} for {type_name} (typo?)"
        if fields[key] is not None:
            check_schema(value, fields[key], f"{where}.{key}")


def test_kubernetes_objects_use_only_known_fields():
    for path, doc in all_k8s_docs():
        check_schema(doc, doc["kind"], f"{path.name}:{doc['kind']}")


def test_check_schema_catches_a_typo():
    pod = {"containers": [{"name": "c", "image": "i", "volumeMount": []}]}
    with pytest.raises(AssertionError, match="volumeMount"):
        check_schema(pod, "PodSpec", "pod")


# --------------------------------------------------------------------------------------------
# Ray topology: head, GPU workers, shared memory, autoscaling, auth
# --------------------------------------------------------------------------------------------

def test_head_takes_no_work_and_gpus_are_only_in_worker_groups():
    gpu_workers = 0
    for where, role, pod in pod_templates():
        for c in containers(pod):
            if role == "worker":
                gpu_workers += gpu_count(c) > 0
                if gpu_count(c):
                    limits = c["resources"].get("limits", {})
                    assert GPU in limits, f"{where}: GPUs go in limits (Kubernetes extended resources)"
                    assert c["resources"].get("requests", {}).get(GPU, limits[GPU]) == limits[GPU], where
            else:
                assert gpu_count(c) == 0, f"{where} ({role}) requests a GPU"
    assert gpu_workers >= 2, "the RayCluster and the RayJob each have a GPU worker group"
    for where, spec in ray_cluster_specs():
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{where}: the head must take no tasks or actors"
        for c in containers(spec["headGroupSpec"]["template"]["spec"]):
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{where}: head requests and limits"


def test_every_ray_pod_mounts_shared_memory_and_the_model_cache():
    cache = dockerfile_env()["ZIPSCRIBE_CACHE"]
    for where, role, pod in pod_templates():
        if role == "other":
            continue
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{where}: /dev/shm not mounted (Ray's object store)"
            shm = volumes[mounts["/dev/shm"]]
            assert shm.get("emptyDir", {}).get("medium") == "Memory", f"{where}: /dev/shm must be an emptyDir with medium Memory"
            assert "sizeLimit" in shm["emptyDir"], f"{where}: bound /dev/shm (it counts against the pod's memory)"
            assert cache in mounts, f"{where}: the model cache {cache} (ZIPSCRIBE_CACHE in the image) is not mounted"
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{where}: requests and limits"


def test_autoscaling_bounds_and_auth():
    rc = the_raycluster()["spec"]
    assert rc.get("enableInTreeAutoscaling") is True
    assert rc["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    (gpu_group,) = [g for g in rc["workerGroupSpecs"] if gpu_count(g["template"]["spec"]["containers"][0])]
    assert gpu_group["minReplicas"] == 0 < gpu_group["maxReplicas"], "the long-lived cluster scales its GPUs from zero"
    secrets = set()
    for where, spec in ray_cluster_specs():
        auth = spec.get("authOptions", {})
        assert auth.get("mode") == "token" and auth.get("secretName"), f"{where}: token authentication from a named Secret"
        secrets.add(auth["secretName"])
    assert len(secrets) == 1, "one token Secret for the cluster, its RayJobs and the CronJob"
    # Clients outside Ray pods (CronJob, RayJob submitter) read the same Secret's auth_token.
    (secret,) = secrets
    for where, role, pod in pod_templates():
        if role != "other":
            continue
        env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret, "auth_token"), where


def test_no_inline_credentials():
    secretish = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|CREDENTIAL|PRIVATE)", re.I)
    for path, doc in all_k8s_docs():
        assert doc["kind"] != "Secret", f"{path.name}: no Secret objects with values in the repository (create them with kubectl)"
        for where, node in walk(doc):
            if isinstance(node, dict) and "name" in node and ("value" in node or "valueFrom" in node):
                if secretish.search(str(node["name"])):
                    assert "value" not in node, f"{path.name}{where}: {node['name']} has an inline value"
                    assert "secretKeyRef" in node["valueFrom"], f"{path.name}{where}: {node['name']} must come from a Secret"
            if isinstance(node, dict) and "envFrom" in node:
                for src in node["envFrom"]:
                    assert set(src) <= {"secretRef", "configMapRef", "prefix"}, f"{path.name}{where}"
    compose = yaml.safe_load((INFRA / "local" / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secretish.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", str(value)), f"compose {name}.{key}: from the environment, not inline"
    # Nothing that looks like a real key anywhere under infra/.
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path}: AWS access key id"
            assert not re.search(r"(?i)(secret|token|password)\w*\s*[:=]\s*['\"]?[A-Za-z0-9/+]{32,}", text), f"{path}: inline secret"


def test_every_ray_node_exports_metrics_where_the_monitors_and_annotations_look():
    """Each Ray pod (head and workers, RayCluster and RayJob) starts Ray with the metrics export
    port that its container names "metrics" and its prometheus.io annotations give; the
    ServiceMonitor (head Service) and PodMonitor (workers) scrape that port by name, selecting
    the labels KubeRay puts on head and worker pods; the dashboard's JSON is Grafana's."""
    for where, spec in ray_cluster_specs():
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        for name, group in groups:
            port = group["rayStartParams"].get("metrics-export-port")
            assert port and port.isdigit(), f"{where}.{name}: rayStartParams metrics-export-port"
            template = group["template"]
            (container,) = [c for c in template["spec"]["containers"] if c["name"].startswith("ray-")]
            named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert named.get("metrics") == int(port), f"{where}.{name}: container port 'metrics' = {port}"
            ann = template["metadata"].get("annotations", {})
            assert (ann.get("prometheus.io/scrape"), ann.get("prometheus.io/port")) == ("true", port), f"{where}.{name}"
    monitors = {d["kind"]: d for _, d in all_k8s_docs() if d["apiVersion"] == "monitoring.coreos.com/v1"}
    assert set(monitors) == {"ServiceMonitor", "PodMonitor"}
    head, workers = monitors["ServiceMonitor"]["spec"], monitors["PodMonitor"]["spec"]
    assert head["selector"]["matchLabels"] == {"ray.io/node-type": "head"}
    assert workers["selector"]["matchLabels"] == {"ray.io/node-type": "worker"}
    assert {e["port"] for e in head["endpoints"] + workers["podMetricsEndpoints"]} == {"metrics"}
    dashboard = json.loads((INFRA / "grafana" / "zipscribe.json").read_text())
    assert dashboard["uid"] and dashboard["panels"] and all(t["expr"] for p in dashboard["panels"] for t in p["targets"])


def test_nightly_cronjob_targets_the_raycluster_head():
    rc = the_raycluster()
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    dashboard = {p["name"]: p["containerPort"] for p in head["ports"]}["dashboard"]
    (_, cron), = docs_of_kind("CronJob")
    env = {e["name"]: e for e in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    # KubeRay names the head Service <cluster>-head-svc.
    assert env["RAY_ADDRESS"]["value"] == f"http://{rc['metadata']['name']}-head-svc:{dashboard}"
    gpus = int(env["EVAL_GPUS"]["value"])
    (gpu_group,) = [g for g in rc["spec"]["workerGroupSpecs"] if gpu_count(g["template"]["spec"]["containers"][0])]
    assert 1 <= gpus <= gpu_group["maxReplicas"] * gpu_count(gpu_group["template"]["spec"]["containers"][0])


# --------------------------------------------------------------------------------------------
# Image names, Ray version, Dockerfile = Makefile install
# --------------------------------------------------------------------------------------------

def test_images_and_ray_version_match_the_dockerfile():
    names = image_names()
    args = dockerfile_args()
    ray_version = args["RAY_VERSION"]
    froms = [rest for instr, rest in dockerfile() if instr == "FROM"]
    assert froms == ["rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${FLAVOR}"], "official Ray image, gpu / cpu by FLAVOR"
    assert args["FLAVOR"] == "gpu"
    py = re.fullmatch(r"py3(\d+)", args["PYTHON_TAG"])
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert py and int(py.group(1)) >= int(re.fullmatch(r">=3\.(\d+)", requires).group(1)), "the image's Python satisfies requires-python"
    for where, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != Dockerfile RAY_VERSION {ray_version}"
    for where, role, pod in pod_templates():
        for c in containers(pod):
            assert c["image"] in names.values(), f"{where}: image {c['image']} is not one the Dockerfile builds ({names})"
            if gpu_count(c):
                assert c["image"] == names["gpu"], f"{where}: GPU pods need the gpu image"
    for where, spec in ray_cluster_specs():
        images = {c["image"] for c in containers(spec["headGroupSpec"]["template"]["spec"])}
        images |= {c["image"] for g in spec["workerGroupSpecs"] for c in containers(g["template"]["spec"])}
        assert len(images) == 1, f"{where}: head and workers must run the same image (same Python, Ray, torch): {images}"
    # Every mention of the image anywhere (manifests, compose, Dockerfile header, README section).
    repo = names["gpu"].rsplit(":", 1)[0]
    for path in [*INFRA.rglob("*"), REPO / "README.md"]:
        if path.is_file():
            for ref in re.findall(re.escape(repo) + r":[\w.{}-]+", path.read_text()):
                assert ref in names.values() or "{" in ref, f"{path}: {ref} is not an image the Dockerfile documents"
    compose = yaml.safe_load((INFRA / "local" / "compose.yaml").read_text())
    head = compose["services"]["ray-head"]
    assert head["image"] == names["cpu"] and head["build"]["args"]["FLAVOR"] == "cpu"
    assert head["build"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO))
    assert (INFRA / "local" / head["build"]["context"]).resolve() == REPO


def test_dockerfile_installs_with_the_makefile():
    runs = [rest for instr, rest in dockerfile() if instr == "RUN"]
    joined = "\n".join(runs)
    assert re.search(r"\bmake system-deps\b", joined), "the Makefile's apt step"
    (install,) = [r for r in runs if re.search(r"\bmake install\b", r)]
    assert not re.search(r"\bpip3?\s+install\b|-m\s+pip\s+install\b", joined), "a second pip recipe would drift from the Makefile"
    assert not re.search(r"\b(conda|mamba|uv)\s+(pip\s+)?install\b", joined)
    # apt in the Dockerfile only bootstraps `make`; the project's packages come from make system-deps.
    apt_packages = set(makefile_var("APT_PACKAGES").split())
    for run in runs:
        for m in re.finditer(r"apt-get install ([^&;|]*)", run):
            pkgs = {w for w in m.group(1).split() if not w.startswith("-") and not w.startswith(">")}
            assert pkgs == {"make"}, f"the Dockerfile installs {pkgs} itself; add runtime packages to the Makefile's APT_PACKAGES"
            assert not pkgs & apt_packages
    # The same torch pin as `make install` (the CUDA wheel of the same version).
    assert dockerfile_args()["TORCH_SPEC"] == makefile_var("TORCH_SPEC")
    assert 'TORCH_SPEC="${TORCH_SPEC}"' in install and "TORCH_INDEX=" in install
    # Installed into the base image's Python (one interpreter, one Ray) with Ray pinned.
    assert "VENV=/home/ray/anaconda3" in install and "PIP_CONSTRAINT=" in install and "ray==${RAY_VERSION}" in install
    users = [rest for instr, rest in dockerfile() if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert users[-1].split(":")[0].isdigit(), "numeric USER, so Kubernetes runAsNonRoot can verify it"
    for where, role, pod in pod_templates():
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and str(sc.get("runAsUser")) == users[-1].split(":")[0], where
    # No model inside the image.
    for instr, rest in dockerfile():
        if instr in ("COPY", "ADD"):
            assert not re.search(r"\.(pt|pth|ckpt|onnx)\b|\bexp/", rest), f"{instr} {rest}: models are mounted or fetched, not baked in"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".venv", ".git", "**/*.pt"):
        assert pattern in ignore, f"Dockerfile.dockerignore must exclude {pattern}"


# --------------------------------------------------------------------------------------------
# Placeholders and the job arguments, through the real parsers
# --------------------------------------------------------------------------------------------

def test_placeholders_are_declared_and_documented():
    for path in k8s_files():
        text = path.read_text()
        used = set(PLACEHOLDER.findall(text))
        declared = declared_placeholders(text)
        assert used == declared, f"{path.name}: placeholders used {sorted(used)} but declared {sorted(declared)}"
        if declared:
            m = re.search(r"envsubst '([^']*)' < infra/k8s/" + re.escape(path.name), text)
            assert m, f"{path.name}: document the envsubst command for its placeholders"
            assert set(PLACEHOLDER.findall(m.group(1))) == declared, f"{path.name}: envsubst must name exactly the placeholders"
            assert declared <= set(SAMPLE_VALUES), "add sample values for new placeholders to this test"


@pytest.mark.needs_tools("envsubst")
def test_envsubst_fills_the_manifests_like_the_test_does():
    for path in k8s_files():
        text = path.read_text()
        names = " ".join("${%s}" % n for n in sorted(declared_placeholders(text)))
        out = subprocess.run(["envsubst", names], input=text, text=True, capture_output=True, check=True,
                             env={**os.environ, **SAMPLE_VALUES}).stdout
        assert out == substitute(text, SAMPLE_VALUES), path.name


def test_rayjob_entrypoint_is_accepted_by_jobs_transcribe():
    (path, job), = docs_of_kind("RayJob")
    tokens = shlex.split(job["spec"]["entrypoint"])
    assert not any("$" in t for t in tokens), f"unfilled placeholder in {tokens}"
    script, argv = python_command(tokens)
    assert script == "jobs/transcribe.py"
    args = parse_with_real_parser(script, argv)
    assert args.manifest == [SAMPLE_VALUES["MANIFEST"]] and args.model == SAMPLE_VALUES["MODEL"]
    assert args.output == SAMPLE_VALUES["OUTPUT"] and args.run_id == SAMPLE_VALUES["RUN_ID"]
    assert args.gpus_per_actor == 1, "fail clearly instead of falling back to CPU when the GPUs are missing"
    from pipeline.run.config import check_run_id

    check_run_id(args.run_id)
    assert job["metadata"]["name"].endswith(SAMPLE_VALUES["RUN_ID"])
    # The longest RUN_ID the header allows still gives DNS-1123 label names: KubeRay names the
    # cluster <rayjob>-<5 chars> and its head Service <cluster>-head-svc.
    limit = int(re.search(r"RUN_ID .*at most (\d+) characters", path.read_text()).group(1))
    longest = substitute(path.read_text(), {**SAMPLE_VALUES, "RUN_ID": "r" * limit})
    name = yaml.safe_load(longest)["metadata"]["name"]
    assert len(f"{name}-abcde-head-svc") <= 63 and DNS1123.fullmatch(name)


def test_a_typo_in_a_flag_fails_the_check():
    (path, job), = docs_of_kind("RayJob")
    tokens = shlex.split(job["spec"]["entrypoint"].replace("--gpus-per-actor", "--gpus-per-acto"))
    script, argv = python_command(tokens)
    with pytest.raises(pytest.fail.Exception, match="rejects the arguments"):
        parse_with_real_parser(script, argv)
    with pytest.raises(pytest.fail.Exception, match="rejects the arguments"):
        parse_with_real_parser("jobs/evaluate.py", ["--eval-set", "x=s3://b/c.jsonl.gz", "--model", "m", "--output", "o",
                                                    "--history", "h", "--max-regresion", "0.5"])


# --------------------------------------------------------------------------------------------
# The nightly CronJob's script, run against a stand-in `ray`
# --------------------------------------------------------------------------------------------

FAKE_RAY = r"""#!{python}
import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_RAY_LOG"], "a") as f:
    f.write(json.dumps({{"argv": args, "pid": os.getpid(), "env": {{k: os.environ.get(k) for k in
            ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}}}}) + "\n")
entry = " ".join(args[args.index("--") + 1:]) if "--" in args else ""
if args[:2] == ["job", "submit"]:
    if os.environ.get("FAKE_RAY_HANG") and os.environ["FAKE_RAY_HANG"] in entry:
        time.sleep(20)
    if os.environ.get("FAKE_RAY_FAIL") and os.environ["FAKE_RAY_FAIL"] in entry:
        print("Job 'x' failed", file=sys.stderr)
        sys.exit(1)
sys.exit(0)
"""


class NightlyScript:
    def __init__(self, tmp: Path):
        (_, cron), = docs_of_kind("CronJob")
        self.container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert self.container["command"][:2] == ["/bin/bash", "-c"] and len(self.container["args"]) == 1
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "ray").write_text(FAKE_RAY.format(python=sys.executable))
        (self.bin / "ray").chmod(0o755)
        self.log = tmp / "ray-calls.jsonl"
        self.env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_RAY_LOG": str(self.log), "HOME": str(tmp)}
        for e in self.container["env"]:
            self.env[e["name"]] = e.get("value", "token-from-the-secret")

    def start(self, **extra: str) -> subprocess.Popen:
        """The script as the container runs it (output to a file: a stand-in client left behind
        must not hold a pipe open)."""
        self.log.write_text("")
        with open(self.log.with_suffix(".out"), "w") as out:
            return subprocess.Popen(["/bin/bash", "-c", self.container["args"][0]], env={**self.env, **extra},
                                    stdout=out, stderr=subprocess.STDOUT)

    def run(self, **extra: str) -> tuple[int, list[dict]]:
        proc = self.start(**extra)
        proc.wait(timeout=60)
        return proc.returncode, self.calls()

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def submitted(call: dict) -> tuple[str, list[str], str]:
    """(script, args, submission id) of a `ray job submit ... -- python SCRIPT ARGS` call."""
    argv = call["argv"]
    assert argv[:2] == ["job", "submit"], argv
    options, entry = argv[2:argv.index("--")], argv[argv.index("--") + 1:]
    # Ray's CLI joins the entrypoint with shlex.join and runs it with a shell on the head.
    script, args = python_command(shlex.split(shlex.join(entry)))
    assert "--address" not in options, "the address comes from RAY_ADDRESS"
    return script, args, options[options.index("--submission-id") + 1]


def test_nightly_script_submits_scale_up_then_evaluate(tmp_path):
    nightly = NightlyScript(tmp_path)
    rc, calls = nightly.run()
    assert rc == 0, calls
    assert len(calls) == 2
    (s1, a1, id1), (s2, a2, id2) = submitted(calls[0]), submitted(calls[1])
    assert (s1, s2) == ("infra/k8s/ensure_resources.py", "jobs/evaluate.py")
    up = parse_with_real_parser(s1, a1)
    assert up.resource == "GPU" and up.count == int(nightly.env["EVAL_GPUS"])
    ev = parse_with_real_parser(s2, a2)
    root = SAMPLE_VALUES["EVAL_ROOT"]
    assert ev.history == f"{root}/history" and ev.output == f"{root}/runs" and ev.model == SAMPLE_VALUES["MODEL"]
    assert [name for name, _ in ev.eval_set] and all(uri.startswith(root + "/") for _, uri in ev.eval_set)
    assert ev.run_id and re.fullmatch(r"nightly-\d{8}", ev.run_id), "one run id per night: reruns resume"
    assert ev.gpus_per_actor == 1
    assert id1 != id2 and id2.startswith(ev.run_id)
    for call in calls:
        assert call["env"]["RAY_AUTH_MODE"] == "token" and call["env"]["RAY_AUTH_TOKEN"]
    # The history location is fixed: the same on every night, no shell expansion in it.
    text = nightly.container["args"][0]
    (history,) = re.findall(r"--history (\S+)", text)
    assert "$(" not in history and "`" not in history and "$run_id" not in history
    rc2, calls2 = nightly.run()
    assert parse_with_real_parser(*submitted(calls2[1])[:2]).history == ev.history


def test_nightly_script_fails_when_a_ray_job_fails(tmp_path):
    nightly = NightlyScript(tmp_path)
    rc, calls = nightly.run(FAKE_RAY_FAIL="jobs/evaluate.py")
    assert rc != 0 and len(calls) == 2, "a failed gate (evaluate exits 1 -> ray job submit exits 1) fails the pod"
    rc, calls = nightly.run(FAKE_RAY_FAIL="ensure_resources.py")
    assert rc != 0 and len(calls) == 1, "no evaluation without its GPUs"


def test_nightly_script_stops_the_ray_job_when_the_pod_is_terminated(tmp_path):
    nightly = NightlyScript(tmp_path)
    proc = nightly.start(FAKE_RAY_HANG="jobs/evaluate.py")
    try:
        deadline = time.time() + 30
        while not any("jobs/evaluate.py" in " ".join(c["argv"]) for c in nightly.calls()):
            assert time.time() < deadline and proc.poll() is None, "the evaluation was never submitted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)   # what the kubelet sends on activeDeadlineSeconds / deletion
        proc.wait(timeout=15)
        assert proc.returncode == 143
        calls = nightly.calls()
        _, _, running_id = submitted([c for c in calls if "jobs/evaluate.py" in " ".join(c["argv"])][0])
        assert calls[-1]["argv"] == ["job", "stop", running_id]
    finally:
        if proc.poll() is None:
            proc.kill()
        for call in nightly.calls():   # the hanging stand-in client
            try:
                os.kill(call["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------------------------
# infra/local/up.sh + down.sh, for real
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line), zombies left out."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), cmdline)
    return table


def descendants_of(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found, grew = set(roots), True
    while grew:
        new = {pid for pid, (ppid, _) in table.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def test_local_up_submit_and_down():
    state = Path(tempfile.mkdtemp(prefix="zsl", dir="/tmp"))   # short: Ray's socket paths live below it
    shutil.rmtree(state)
    ports = {name: free_port() for name in ("ZS_RAY_PORT", "ZS_DASHBOARD_PORT", "ZS_S3_PORT", "ZS_CLIENT_PORT", "ZS_AGENT_PORT")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(ZS_STATE_DIR=str(state), ZS_VENV=str(BIN.parent), ZS_NUM_CPUS="2", ZS_BUCKET="zs-local")
    up, down = INFRA / "local" / "up.sh", INFRA / "local" / "down.sh"
    # A bystander that looks like Ray and an S3 server of another setup: down.sh must spare it.
    other = f"/tmp/zsl-other/ray/session_x raylet --gcs-address=127.0.0.1:{ports['ZS_RAY_PORT'] + 1} moto_server -p {ports['ZS_S3_PORT'] + 1}"
    bystander = subprocess.Popen(["bash", "-c", f'exec -a "{other}" sleep 120'])
    before = set(process_table())
    started: set[int] = set()
    try:
        result = subprocess.run(["bash", str(up)], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        exports = result.stdout
        dashboard = f"http://127.0.0.1:{ports['ZS_DASHBOARD_PORT']}"
        assert f"export RAY_ADDRESS={dashboard}" in exports and "export RAY_AUTH_MODE=token" in exports
        assert f"export AWS_ENDPOINT_URL=http://127.0.0.1:{ports['ZS_S3_PORT']}" in exports

        token_file = state / "ray-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, "token file must be 0600"
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token not in exports and token not in result.stderr, "the token is never printed"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700

        # Token authentication is on: the job API refuses a request without the token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=10)
        assert refused.value.code == 401
        ok = urllib.request.urlopen(urllib.request.Request(f"{dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"}), timeout=10)
        assert ok.status == 200

        # The S3 server and the dashboard answer on 127.0.0.1.
        assert listening(ports["ZS_S3_PORT"]) and listening(ports["ZS_DASHBOARD_PORT"])

        # Submit through the printed exports: a trivial job that uses S3 from the cluster (the
        # head's environment), and ensure_resources.py (the nightly's first job) failing.
        def submit(*entry: str) -> subprocess.CompletedProcess:
            script = f'eval "$1"; shift; exec "{BIN}/ray" job submit -- "$@"'
            return subprocess.run(["bash", "-c", script, "_", exports, *entry], env=env, capture_output=True, text=True, timeout=120)

        probe = "import boto3; boto3.client('s3').put_object(Bucket='zs-local', Key='from-ray.txt', Body=b'ok')"
        done = submit("python", "-c", probe)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        failed = submit("python", f"{REPO}/infra/k8s/ensure_resources.py", "--resource", "GPU", "--count", "1", "--timeout", "2")
        assert failed.returncode != 0, "ray job submit must exit non-zero when the job fails (the CronJob relies on it)"
        assert "not placed" in failed.stdout + failed.stderr

        import boto3

        exported = dict(re.findall(r"^export (AWS_[A-Z_]+)=(\S+)$", exports, re.M))
        s3 = boto3.client("s3", endpoint_url=exported["AWS_ENDPOINT_URL"], region_name=exported["AWS_REGION"],
                          aws_access_key_id=exported["AWS_ACCESS_KEY_ID"], aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"])
        assert s3.get_object(Bucket="zs-local", Key="from-ray.txt")["Body"].read() == b"ok"

        table = process_table()
        started = {pid for pid in set(table) - before
                   if str(state) in table[pid][1] or f":{ports['ZS_RAY_PORT']}" in table[pid][1]
                   or f"-p {ports['ZS_S3_PORT']}" in table[pid][1]}
        started = descendants_of(started, table) - {os.getpid(), bystander.pid}
        assert len(started) >= 5, "a Ray head (gcs, raylet, dashboard, ...) and an S3 server"
    finally:
        stopped = subprocess.run(["bash", str(down)], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert stopped.returncode == 0, stopped.stderr
        time.sleep(0.5)
        still = set(process_table()) & started
        assert not still, f"down.sh left {[(p, process_table().get(p)) for p in still]}"
        assert bystander.poll() is None, "down.sh stopped a process up.sh did not start"
        assert not listening(ports["ZS_S3_PORT"]) and not listening(ports["ZS_DASHBOARD_PORT"])
        assert not state.exists(), "down.sh removes the token and the state"
        again = subprocess.run(["bash", str(down)], env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode == 0, "down.sh twice is harmless"
    finally:
        bystander.kill()
        bystander.wait()
        shutil.rmtree(state, ignore_errors=True)

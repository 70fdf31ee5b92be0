"""infra/: the container image recipe, the KubeRay / Kubernetes manifests and the local cluster
scripts, checked as far as a machine without Docker or Kubernetes allows.

* Every YAML parses; every Kubernetes object passes the real schemas with jsonschema, strictly
  (an unknown field fails, as `kubectl apply`'s server-side field validation does): the KubeRay
  v1.6.0 CRDs (../shared/kuberay-crds-v1.6.0, or $ZIPSCRIBE_KUBERAY_CRDS) for RayCluster and
  RayJob, the Kubernetes 1.30 and 1.34 strict schemas of the kubernetes-validate package for
  the rest and for every pod template; a planted typo (rayVersio) fails them.
* Conventions for a real EKS / GKE cluster: every pod runs under the project's ServiceAccount
  (S3 through IRSA / Workload Identity), the autoscaled group has no `replicas` (a re-apply
  cannot reset live workers), every container (the autoscaler sidecar included) meets the
  restricted Pod Security Standard, every container requests and limits ephemeral storage.
* One source of Ray settings: the RayCluster and the RayJob's cluster are what
  infra/k8s/render.py writes from infra/k8s/settings/ray.yaml, and agree field by field.
* Manifests agree with each other and with the image: image references (one build, pinned by
  tag or digest; infra/docker/build.sh pins them, run here with a stand-in docker), Ray
  version, entry-point scripts, the model cache path, the token Secret, the head service address.
* Ray topology: the head takes no work (num-cpus "0", no GPU), GPUs only in worker groups,
  /dev/shm from a memory emptyDir on every Ray pod, sane autoscaling bounds.
* No credentials inline: only secretKeyRef / envFrom secretRef (Kubernetes) or ${VAR} (compose).
* The job arguments in the manifests go through the real argument parsers of jobs/transcribe.py,
  jobs/evaluate.py and infra/k8s/ensure_resources.py; the nightly CronJob's shell script runs
  against a stand-in `ray` to show what it submits and that a failed Ray job fails the pod.
* The Dockerfile installs with the Makefile (`make system-deps`, `make deps`, `make install`), not
  with a second recipe, dependencies in layers before the code, without the test and train
  extras; its .dockerignore leaves out everything git ignores and nothing the image needs.
* infra/k8s/check-kuberay.sh (KubeRay >= 1.6.0) against a stand-in kubectl; infra/local/up.sh
  stops on a KubeRay too old before starting anything.
* infra/local/up.sh and down.sh run for real: a Ray head with token auth and moto S3 on
  127.0.0.1, jobs submitted through them, then everything up.sh started is stopped and nothing else.
"""

from __future__ import annotations

import copy
import hashlib
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
SETTINGS = K8S / "settings" / "ray.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent
# The KubeRay v1.6.0 CRDs beside the checkout (data for tests, not part of the project).
KUBERAY_CRDS = Path(os.environ.get("ZIPSCRIBE_KUBERAY_CRDS") or REPO.parent / "shared" / "kuberay-crds-v1.6.0")
# The Kubernetes versions whose strict schemas every object and pod template must pass: the
# oldest and the newest that EKS and GKE support as this is written.
K8S_VERSIONS = ("1.30", "1.34")

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


def image_repository() -> str:
    """The repository of the Dockerfile's `# image: REPO:{version}-{revision}-{flavor}` line."""
    m = re.search(r"^# image: (\S+):\{version\}-\{revision\}-\{flavor\}$", DOCKERFILE.read_text(), re.M)
    assert m, "infra/docker/Dockerfile must document its image as '# image: REPO:{version}-{revision}-{flavor}'"
    return m.group(1)


def shared_settings() -> dict:
    return yaml.safe_load(SETTINGS.read_text())


def renderer():
    """infra/k8s/render.py as a module."""
    return load_script("infra/k8s/render.py")


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


def autoscaler_container(spec: dict) -> dict | None:
    """The sidecar KubeRay adds to the head pod of an autoscaling cluster, with the fields the
    manifest gives it (autoscalerOptions: securityContext, resources); None without autoscaling."""
    if not spec.get("enableInTreeAutoscaling"):
        return None
    options = spec.get("autoscalerOptions", {})
    return {"name": "autoscaler", "securityContext": options.get("securityContext", {}), "resources": options.get("resources", {})}


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
            for field in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
                assert field in group, f"{g}: no {field}"
            assert all(isinstance(group[f], int) for f in ("minReplicas", "maxReplicas")), g
            assert 0 <= group["minReplicas"] <= group["maxReplicas"], f"{g}: min <= max"
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


# --------------------------------------------------------------------------------------------
# The real schemas: KubeRay v1.6.0 CRDs and the Kubernetes strict schemas, with jsonschema
# --------------------------------------------------------------------------------------------

OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
CRD_FILES = {"RayCluster": "rayclusters.yaml", "RayJob": "rayjobs.yaml"}
# Kinds this test has no schema for, each with the reason (e.g. a third-party CRD not at hand);
# any other kind without a schema fails the test.
NO_SCHEMA_HERE: dict[str, str] = {
    "ServiceMonitor": "Prometheus Operator CRD (monitoring.coreos.com/v1), not at hand: its fields are "
                      "checked by test_every_ray_node_exports_metrics_where_the_monitors_and_annotations_look",
    "PodMonitor": "Prometheus Operator CRD (monitoring.coreos.com/v1), as ServiceMonitor",
}


@lru_cache(maxsize=None)
def k8s_schema_dir(version: str) -> Path:
    import kubernetes_validate

    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    assert path.is_dir(), f"kubernetes-validate has no strict schemas of Kubernetes {version} ({path})"
    return path


@lru_cache(maxsize=None)
def k8s_registry(version: str):
    from referencing import Registry, Resource

    definitions = json.loads((k8s_schema_dir(version) / "_definitions.json").read_text())
    return Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))


def strict(node: Any) -> Any:
    """A CRD's OpenAPI schema as the API server applies it with strict field validation: an object
    with declared properties takes no other field (unless it preserves unknown fields)."""
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        node = [strict(v) for v in node]
    return node


@lru_cache(maxsize=None)
def kuberay_schema(kind: str) -> dict:
    path = KUBERAY_CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"the KubeRay v1.6.0 CRDs are not at {KUBERAY_CRDS} (../shared beside the checkout; or set ZIPSCRIBE_KUBERAY_CRDS)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "ray.io", path
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}   # what the API server checks it against
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


@lru_cache(maxsize=None)
def validator(kind: str, api_version: str, k8s_version: str = K8S_VERSIONS[-1]):
    """A jsonschema validator of `kind` (KubeRay's CRD for ray.io, else Kubernetes' strict schema)."""
    import jsonschema

    if api_version == "ray.io/v1" and kind in CRD_FILES:
        schema = kuberay_schema(kind)
    else:
        # kubernetes-validate's file names: batch/v1 CronJob -> cronjob-batch-v1.json, v1 -> ...-v1.json
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        path = k8s_schema_dir(k8s_version) / f"{kind.lower()}-{group_version}.json"
        if not path.is_file():
            pytest.fail(f"no schema for {kind} ({api_version}): add its CRD to this test, or list it in NO_SCHEMA_HERE with a reason")
        schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema, registry=k8s_registry(k8s_version))


def schema_errors(doc: dict, kind: str | None = None, api_version: str | None = None, k8s_version: str = K8S_VERSIONS[-1]) -> list[str]:
    check = validator(kind or doc["kind"], api_version or doc["apiVersion"], k8s_version)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in check.iter_errors(doc)]


def test_manifests_pass_the_kuberay_crds_and_the_kubernetes_strict_schemas():
    checked = set()
    for path, doc in all_k8s_docs():
        if doc["kind"] in NO_SCHEMA_HERE:
            continue
        versions = K8S_VERSIONS if doc["apiVersion"] != "ray.io/v1" else K8S_VERSIONS[-1:]
        for version in versions:
            errors = schema_errors(doc, k8s_version=version)
            assert not errors, f"{path.name}: {doc['kind']} fails its schema (Kubernetes {version}):\n" + "\n".join(errors[:20])
        checked.add(doc["kind"])
    assert checked >= {"ServiceAccount", "RayCluster", "RayJob", "CronJob"}
    # The pod templates inside the KubeRay objects against Kubernetes' own PodTemplateSpec of
    # each version too: the CRD embeds the PodSpec of the Kubernetes KubeRay was built with.
    for where, role, pod in pod_templates():
        for version in K8S_VERSIONS:
            errors = schema_errors({"spec": pod}, "PodTemplateSpec", "v1", version)
            assert not errors, f"{where}: the pod template fails Kubernetes {version}:\n" + "\n".join(errors[:20])


def test_a_planted_typo_fails_the_schemas():
    def mutated(name: str, old: str, new: str) -> list[dict]:
        text = (K8S / name).read_text()
        assert old in text, (name, old)
        return [d for d in yaml.safe_load_all(substitute(text.replace(old, new, 1), SAMPLE_VALUES)) if d]

    cases = [
        ("raycluster.yaml", "rayVersion:", "rayVersio:", "rayVersio"),
        ("rayjob-transcribe.yaml", "rayVersion:", "rayVersio:", "rayVersio"),
        ("raycluster.yaml", "volumeMounts:", "volumeMount:", "volumeMount"),   # in the PodSpec inside the CRD
        ("raycluster.yaml", "      allowPrivilegeEscalation: false", "      allowPrivilegeEscalaton: false", "allowPrivilegeEscalaton"),
        ("nightly-evaluate.yaml", "concurrencyPolicy:", "concurrencyPolicyy:", "concurrencyPolicyy"),
        ("nightly-evaluate.yaml", "automountServiceAccountToken:", "automountServiceAcountToken:", "automountServiceAcountToken"),
        ("serviceaccount.yaml", "  labels:", "  label:", "label"),
        ("raycluster.yaml", "maxReplicas: 4", "maxReplicas: four", "four"),   # a type, not a name
    ]
    for name, old, new, word in cases:
        errors = [e for doc in mutated(name, old, new) for e in schema_errors(doc)]
        assert any(word in e for e in errors), f"{name} with {new!r} passed the schemas: {errors}"


def test_strict_keeps_maps_and_preserved_fields_open():
    schema = strict({"type": "object", "properties": {
        "known": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True},
        "items": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
    }})
    assert schema["additionalProperties"] is False and schema["properties"]["items"]["items"]["additionalProperties"] is False
    assert schema["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema["properties"]["free"]


# --------------------------------------------------------------------------------------------
# Conventions for a real cluster: identity, re-applies, pod security, local disk
# --------------------------------------------------------------------------------------------

def the_service_account() -> dict:
    (_, account), = docs_of_kind("ServiceAccount")
    return account


def test_every_pod_runs_under_the_projects_service_account():
    """IRSA / Workload Identity give credentials to the pods of one ServiceAccount: a pod left on
    the namespace's `default` account (the RayJob's, before) fails at its first S3 read."""
    account = the_service_account()["metadata"]["name"]
    roles = set()
    for where, role, pod in pod_templates():
        assert pod.get("serviceAccountName") == account, f"{where}: serviceAccountName must be {account!r}"
        roles.add(role)
    assert roles == {"head", "worker", "other"}
    # Only the autoscaling cluster's head talks to the Kubernetes API (KubeRay's autoscaler
    # sidecar, whose Role KubeRay binds to the head's account); no other pod mounts a token.
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]["template"]["spec"]
        if spec.get("enableInTreeAutoscaling"):
            assert head.get("automountServiceAccountToken") is not False, f"{where}: the autoscaler needs the API token"
        else:
            assert head.get("automountServiceAccountToken") is False, f"{where}: no autoscaler, no API token"
    for where, role, pod in pod_templates():
        if role != "head":
            assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts an API token it does not use"
    text = (K8S / "serviceaccount.yaml").read_text()
    for annotation in ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"):
        assert annotation in text, f"serviceaccount.yaml documents {annotation}"


def replicas_problems(spec: dict) -> list[str]:
    """An autoscaled group must not carry `replicas`: a client-side `kubectl apply` of the file
    would reset it (to 0: KubeRay deletes the live workers mid-job). A fixed group must."""
    problems = []
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        if spec.get("enableInTreeAutoscaling"):
            if "replicas" in group:
                problems.append(f"{name}: an autoscaled group has no replicas (the autoscaler owns it)")
        elif not ("replicas" in group and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]):
            problems.append(f"{name}: a fixed group needs minReplicas <= replicas <= maxReplicas")
    return problems


def test_autoscaled_groups_have_no_replicas():
    autoscaled = 0
    for where, spec in ray_cluster_specs():
        assert not replicas_problems(spec), f"{where}: {replicas_problems(spec)}"
        autoscaled += bool(spec.get("enableInTreeAutoscaling"))
    assert autoscaled == 1, "the long-lived RayCluster autoscales"
    rc = copy.deepcopy(the_raycluster()["spec"])
    rc["workerGroupSpecs"][0]["replicas"] = 0
    assert replicas_problems(rc), "the check finds replicas on an autoscaled group"


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def restricted_problems(pod: dict, extra: list[dict] = ()) -> list[str]:
    """Where `pod` (and `extra` containers KubeRay adds to it) breaks the "restricted" Pod
    Security Standard, in the fields a manifest sets (kubernetes.io/docs/concepts/security/
    pod-security-standards): host namespaces, volume types, running as non-root and not as
    uid 0, no privilege escalation, all capabilities dropped (NET_BIND_SERVICE may be added),
    not privileged, a RuntimeDefault or Localhost seccomp profile."""
    problems = [f"pod: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    psc = pod.get("securityContext", {})
    for c in [*pod.get("initContainers", []), *pod.get("containers", []), *extra]:
        sc = c.get("securityContext") or {}
        name = c.get("name")

        def effective(key: str) -> Any:
            return sc.get(key, psc.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot")
        if effective("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        if (effective("seccompProfile") or {}).get("type") not in SECCOMP_OK:
            problems.append(f"{name}: seccompProfile RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities.drop [ALL]")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {caps['add']}")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def pods_with_sidecars() -> Iterator[tuple[str, str, dict, list[dict]]]:
    """(where, role, pod, containers KubeRay adds) for every pod template."""
    sidecars = {where: autoscaler_container(spec) for where, spec in ray_cluster_specs()}
    for where, role, pod in pod_templates():
        sidecar = sidecars.get(where) if role == "head" else None
        yield where, role, pod, [sidecar] if sidecar else []


def test_every_container_meets_the_restricted_pod_security_standard():
    autoscalers = 0
    for where, role, pod, extra in pods_with_sidecars():
        problems = restricted_problems(pod, extra)
        assert not problems, f"{where}: not 'restricted': {problems}"
        autoscalers += len(extra)
    assert autoscalers == 1, "the autoscaler sidecar is checked (autoscalerOptions.securityContext)"


def test_the_restricted_check_can_fail():
    (_, _, head, extra), = [p for p in pods_with_sidecars() if p[3]]
    assert not restricted_problems(head, extra)
    mutations = {
        "seccompProfile": lambda pod, ext: pod["securityContext"].pop("seccompProfile"),
        "runAsNonRoot": lambda pod, ext: pod["containers"][0].setdefault("securityContext", {}).update(runAsNonRoot=False),
        "allowPrivilegeEscalation": lambda pod, ext: ext[0]["securityContext"].pop("allowPrivilegeEscalation"),
        "capabilities.drop": lambda pod, ext: ext[0]["securityContext"].pop("capabilities"),
        "capabilities.add": lambda pod, ext: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "runAsUser 0": lambda pod, ext: pod["securityContext"].update(runAsUser=0),
        "volume": lambda pod, ext: pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        "hostPort": lambda pod, ext: pod["containers"][0]["ports"][0].update(hostPort=6379),
    }
    for what, mutate in mutations.items():
        pod, ext = copy.deepcopy(head), copy.deepcopy(extra)
        mutate(pod, ext)
        assert restricted_problems(pod, ext), f"a pod without {what} passed"


QUANTITY_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: Any) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert m and m.group(2) in QUANTITY_UNITS, f"not a storage quantity: {value!r}"
    return float(m.group(1)) * QUANTITY_UNITS[m.group(2)]


def test_every_container_requests_and_limits_ephemeral_storage():
    """The model cache (an emptyDir on the node's disk), Ray's logs and spilled objects: a GPU
    node with a small disk must not evict pods the scheduler placed without counting them."""
    for where, role, pod, extra in pods_with_sidecars():
        limit = 0.0
        for c in [*pod["containers"], *extra]:
            res = c.get("resources", {})
            request, cap = res.get("requests", {}).get("ephemeral-storage"), res.get("limits", {}).get("ephemeral-storage")
            assert request and cap, f"{where}: {c['name']} requests and limits ephemeral-storage"
            assert quantity(request) <= quantity(cap), f"{where}: {c['name']} ephemeral-storage request <= limit"
            limit += quantity(cap)
        # Disk-backed emptyDirs count against the pod's limit (the sum of its containers'):
        # leave room beyond them for Ray's logs and spilled objects.
        on_disk = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in pod.get("volumes", [])
                      if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
        assert all("sizeLimit" in v["emptyDir"] for v in pod.get("volumes", []) if "emptyDir" in v), f"{where}: bound every emptyDir"
        if role != "other":
            assert on_disk >= 20 * 2**30, f"{where}: the model cache"
            assert limit >= on_disk + 8 * 2**30, \
                f"{where}: ephemeral-storage limit {limit / 2**30:g}Gi leaves < 8Gi beyond the emptyDirs ({on_disk / 2**30:g}Gi)"


# --------------------------------------------------------------------------------------------
# One source of Ray settings: infra/k8s/settings/ray.yaml, written into the manifests by render.py
# --------------------------------------------------------------------------------------------

def shared_sections(text: str) -> list[str]:
    return re.findall(r"^ *# BEGIN shared: ([\w.-]+)\s*$", text, re.M)


def test_manifests_are_what_the_shared_settings_give():
    results = renderer().rendered()
    assert set(results) == set(k8s_files())
    for path, (on_disk, wanted) in results.items():
        assert on_disk == wanted, (f"{path.name} differs from what infra/k8s/render.py writes from {SETTINGS.name} "
                                   "(edit the settings, not the generated lines, and run it; --check shows the diff)")
    check = subprocess.run([sys.executable, str(K8S / "render.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_raycluster_and_rayjob_share_their_ray_settings():
    """The RayJob's cluster performs as the RayCluster does: the same Ray version, auth,
    rayStartParams and Ray environment per role, and both take them from the settings."""
    settings = shared_settings()
    used = {path.name: shared_sections(path.read_text()) for path in k8s_files()}
    sections = [f"{role}.{part}" for role in ("head", "gpu") for part in ("group", "env")] + ["cluster"]
    for name in ("raycluster.yaml", "rayjob-transcribe.yaml"):
        assert sorted(used[name]) == sorted(sections), f"{name}: generated sections {used[name]}"
    specs = dict(ray_cluster_specs())
    (rc,) = [s for w, s in specs.items() if w.startswith("raycluster.yaml")]
    (rj,) = [s for w, s in specs.items() if w.startswith("rayjob-transcribe.yaml")]

    def ray_settings(spec: dict) -> dict:
        out = {"rayVersion": spec["rayVersion"], "authOptions": spec["authOptions"]}
        groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
        for role, group in groups.items():
            (ray_container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
            out[role] = {"rayStartParams": group["rayStartParams"], "env": ray_container.get("env", [])}
        return out

    assert ray_settings(rc) == ray_settings(rj)
    assert ray_settings(rc)["gpu"]["env"] == settings["gpu"]["env"]
    assert ray_settings(rc)["head"]["rayStartParams"] == settings["head"]["group"]["rayStartParams"]
    assert {"name": "RAY_num_workers_soft_limit", "value": "24"} in ray_settings(rj)["head"]["env"]


def test_a_changed_setting_reaches_both_clusters():
    settings = copy.deepcopy(shared_settings())
    settings["gpu"]["env"].append({"name": "RAY_EXAMPLE", "value": "1"})
    settings["head"]["group"]["rayStartParams"]["metrics-export-port"] = "8080"
    settings["cluster"]["rayVersion"] = "2.61.0"
    settings["images"]["cpu"] = "registry.example/zs:0.1.0-0123456789ab-cpu@sha256:" + "c" * 64
    for path in k8s_files():
        text = renderer().render(path.read_text(), settings, path.name)
        for doc in (d for d in yaml.safe_load_all(substitute(text, SAMPLE_VALUES)) if d):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"]) if doc["kind"] in CRD_FILES else None
            if spec:
                assert spec["rayVersion"] == "2.61.0" and spec["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
                assert {"name": "RAY_EXAMPLE", "value": "1"} in spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
                assert not schema_errors(doc), path.name
        if path.name in ("rayjob-transcribe.yaml", "nightly-evaluate.yaml"):
            assert settings["images"]["cpu"] in text, f"{path.name}: the cpu image"


def test_render_refuses_broken_sections():
    render, error = renderer().render, renderer().RenderError
    settings = shared_settings()
    for text, match in [("a:\n  # BEGIN shared: cluster\n  x: 1\n", "no '# END"),
                        ("# BEGIN shared: cluster\n# END shared: head.env\n", "closes"),
                        ("# END shared: cluster\n", "without BEGIN"),
                        ("# BEGIN shared: nowhere\n# END shared: nowhere\n", "no 'nowhere'"),
                        ("# BEGIN shared: cluster\n# BEGIN shared: head.env\n# END shared: head.env\n# END shared: cluster\n", "inside"),
                        ("image: x  # shared: head\n", "not a scalar")]:
        with pytest.raises(error, match=match):
            render(text, settings)
    assert render("  # BEGIN shared: head.env\n  - old\n  # END shared: head.env\n", settings) == \
        '  # BEGIN shared: head.env\n  - {name: RAY_num_workers_soft_limit, value: "24"}\n  # END shared: head.env\n'


# A stand-in docker: logs its arguments (one per line, a blank line after each call); `image
# inspect` answers a RepoDigest made from the tag's SHA-256.
FAKE_DOCKER = r"""#!/usr/bin/env bash
printf '%s\n' "$@" "" >> "$FAKE_DOCKER_LOG"
if [ "$1 $2" = "image inspect" ]; then
  tag="${@: -1}"
  echo "${tag%:*}@sha256:$(printf '%s' "$tag" | sha256sum | cut -d' ' -f1)"
fi
"""


def docker_calls(log: Path) -> list[list[str]]:
    return [call.split("\n") for call in log.read_text().split("\n\n") if call]


def test_build_script_tags_each_build_and_pins_the_manifests(tmp_path):
    """infra/docker/build.sh with a stand-in docker, in a copy of the repository's infra/."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copytree(INFRA, work / "infra", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", work)
    git = lambda *a: subprocess.run(["git", *a], cwd=work, check=True, capture_output=True, text=True).stdout.strip()   # noqa: E731
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    revision = git("rev-parse", "HEAD")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "bin" / "docker").chmod(0o755)
    log = tmp_path / "docker.jsonl"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(log), "PYTHON": sys.executable}
    repo = "registry.example:5000/asr/zipscribe"
    before = {p.name: p.read_text() for p in (work / "infra" / "k8s").glob("*.yaml")}

    run = subprocess.run(["bash", "infra/docker/build.sh", "--repo", repo, "--push"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    calls = docker_calls(log)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    refs = {}
    for flavor in ("gpu", "cpu"):
        tag = f"{repo}:{version}-{revision[:12]}-{flavor}"
        (build,) = [c for c in calls if c[0] == "build" and tag in c]
        assert f"FLAVOR={flavor}" in build and f"GIT_REVISION={revision}" in build and build[-1] == "."
        assert ["push", tag] in calls
        refs[flavor] = f"{tag}@sha256:{hashlib.sha256(tag.encode()).hexdigest()}"
    # The manifests now name exactly those images, and only the image lines changed.
    for path in (work / "infra" / "k8s").glob("*.yaml"):
        text = path.read_text()
        images = re.findall(r"image: (\S+)", text)
        assert set(images) <= set(refs.values()) and (images or path.name in ("serviceaccount.yaml", "monitoring.yaml")), (path.name, images)
        old_lines, new_lines = before[path.name].splitlines(), text.splitlines()
        changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
        assert len(old_lines) == len(new_lines) and all("image:" in a and "# shared: images." in b for a, b in changed), path.name
    assert yaml.safe_load((work / "infra" / "k8s" / "settings" / "ray.yaml").read_text())["images"] == refs
    check = subprocess.run([sys.executable, "infra/k8s/render.py", "--check"], cwd=work, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # An uncommitted change gets a tag of its own; without --push the tag alone is written.
    (work / "infra" / "k8s" / "ensure_resources.py").write_text("# changed\n")
    log.write_text("")
    run = subprocess.run(["bash", "infra/docker/build.sh", "--flavor", "cpu"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (build,) = docker_calls(log)
    (tag,) = [w for w in build if w.startswith(repo + ":")]
    assert re.fullmatch(re.escape(f"{repo}:{version}-{revision[:12]}-dirty.") + r"\d{14}-cpu", tag), tag
    settings = yaml.safe_load((work / "infra" / "k8s" / "settings" / "ray.yaml").read_text())
    assert settings["images"] == {"gpu": refs["gpu"], "cpu": tag}


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
    the labels KubeRay puts on head and worker pods, with only the fields of the Prometheus
    Operator's monitoring.coreos.com/v1 that this table knows (a typo fails); the dashboard's
    JSON is Grafana's."""
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
    known = {
        "": {"apiVersion", "kind", "metadata", "spec"},
        "metadata": {"name", "namespace", "labels", "annotations"},
        "spec": {"jobLabel", "selector", "namespaceSelector", "endpoints", "podMetricsEndpoints", "targetLabels",
                 "podTargetLabels"},
        "selector": {"matchLabels", "matchExpressions"},
        "endpoint": {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings",
                     "honorLabels"},
        "relabeling": {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"},
    }
    for kind, doc in monitors.items():
        spec = doc["spec"]
        endpoints = spec.get("endpoints", []) + spec.get("podMetricsEndpoints", [])
        for part, node in [("", doc), ("metadata", doc["metadata"]), ("spec", spec), ("selector", spec["selector"])] + \
                [("endpoint", e) for e in endpoints] + [("relabeling", r) for e in endpoints for r in e.get("relabelings", [])]:
            assert set(node) <= known[part], f"{kind}.{part or '<root>'}: unknown fields {set(node) - known[part]}"
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
    names = shared_settings()["images"]
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
    # One build per flavor, pinned: the tag of that build (<version>-<revision>-<flavor>) or a digest.
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for flavor, ref in names.items():
        assert renderer().image_ref_problem(ref, flavor) is None, renderer().image_ref_problem(ref, flavor)
        tag = renderer().IMAGE_REF.fullmatch(ref).group("tag")
        assert tag is None or tag.startswith(f"{version}-"), f"{ref}: the tag starts with pyproject.toml's version {version}"
    for where, role, pod in pod_templates():
        for c in containers(pod):
            assert c["image"] in names.values(), f"{where}: image {c['image']} is not one of {SETTINGS.name}'s ({names})"
            if gpu_count(c):
                assert c["image"] == names["gpu"], f"{where}: GPU pods need the gpu image"
    for where, spec in ray_cluster_specs():
        images = {c["image"] for c in containers(spec["headGroupSpec"]["template"]["spec"])}
        images |= {c["image"] for g in spec["workerGroupSpecs"] for c in containers(g["template"]["spec"])}
        assert len(images) == 1, f"{where}: head and workers must run the same image (same Python, Ray, torch): {images}"
    # Every mention of the image anywhere (manifests, compose, Dockerfile header, README) names one build.
    repo = image_repository()
    for path in [*INFRA.rglob("*"), REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        if path.is_file():
            for ref in re.findall(re.escape(repo) + r"[:@][\w.{}:-]+", path.read_text()):
                if "{" not in ref:
                    flavor = "gpu" if "gpu" in ref else "cpu"
                    assert renderer().image_ref_problem(ref, flavor) is None, f"{path}: {ref} is a reused tag"
    compose = yaml.safe_load((INFRA / "local" / "compose.yaml").read_text())
    head = compose["services"]["ray-head"]
    assert repo not in head["image"] and head.get("pull_policy") == "build", "compose builds its own image, never pulls a shared tag"
    assert head["build"]["args"]["FLAVOR"] == "cpu"
    assert head["build"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO))
    assert (INFRA / "local" / head["build"]["context"]).resolve() == REPO


def test_image_references_must_name_one_build():
    problem = renderer().image_ref_problem
    repo = "ghcr.io/zipscribe/zipscribe"
    for ok, flavor in [(f"{repo}:0.1.0-0123456789ab-gpu", "gpu"), (f"{repo}:0.1.0-0123456789ab-dirty.20261208010203-cpu", "cpu"),
                       (f"{repo}:0.1.0-0123456789ab-gpu@sha256:{'a' * 64}", "gpu"), (f"{repo}@sha256:{'b' * 64}", "cpu"),
                       ("localhost:5000/zs:2.0.0-0123456789ab-gpu", "gpu")]:
        assert problem(ok, flavor) is None, (ok, problem(ok, flavor))
    for bad, flavor in [(f"{repo}:0.1.0-gpu", "gpu"), (f"{repo}:latest", "gpu"), (repo, "gpu"),
                        (f"{repo}:0.1.0-0123456789ab-cpu", "gpu"), (f"{repo}:0.1.0-gpu@sha256:{'a' * 5}", "gpu")]:
        assert problem(bad, flavor), bad


def test_dockerfile_installs_with_the_makefile():
    steps = dockerfile()
    runs = [rest for instr, rest in steps if instr == "RUN"]
    joined = "\n".join(runs)
    assert re.search(r"\bmake system-deps\b", joined), "the Makefile's apt step"
    assert not re.search(r"\bpip3?\s+install\b|-m\s+pip\s+install\b", joined), "a second pip recipe would drift from the Makefile"
    assert not re.search(r"\b(conda|mamba|uv)\s+(pip\s+)?install\b", joined)
    # apt in the Dockerfile only bootstraps `make`; the project's packages come from make system-deps.
    apt_packages = set(makefile_var("APT_PACKAGES").split())
    for run in runs:
        for m in re.finditer(r"apt-get install ([^&;|]*)", run):
            pkgs = {w for w in m.group(1).split() if not w.startswith("-") and not w.startswith(">")}
            assert pkgs == {"make"}, f"the Dockerfile installs {pkgs} itself; add runtime packages to the Makefile's APT_PACKAGES"
            assert not pkgs & apt_packages

    # Layers from the least to the most often changed: apt (needs the Makefile), dependencies
    # (need pyproject.toml), the code, the project. Each RUN sees only what was copied before it.
    def index(instr: str, pattern: str) -> int:
        (i,) = [i for i, (ins, rest) in enumerate(steps) if ins == instr and re.search(pattern, rest)]
        return i

    copies = [(i, rest.split()) for i, (ins, rest) in enumerate(steps) if ins == "COPY"]
    apt, deps, install = index("RUN", r"\bmake system-deps\b"), index("RUN", r"\bmake deps\b"), index("RUN", r"\bmake install\b")
    code = index("COPY", r"(^|\s)\. \.$")
    sources = lambda until: {w for i, words in copies if i < until for w in words[:-1] if not w.startswith("--")}   # noqa: E731
    assert sources(apt) == {"Makefile"}, "apt depends on the Makefile alone"
    assert sources(deps) == {"Makefile", "pyproject.toml"}, "the dependencies depend on pyproject.toml and the Makefile alone"
    assert apt < deps < code < install, "apt, then dependencies, then the code, then the project"
    # The runtime image: no test or train extras (pytest, moto, sherpa-onnx, the engines, wordfreq).
    for i in (deps, install):
        assert re.search(r"\bEXTRAS=(\s|$)", steps[i][1]), f"{steps[i][1][:60]}...: EXTRAS= (runtime dependencies only)"
    assert makefile_var("EXTRAS") == "test,train", "make install / make test keep the extras"
    # A value that changes with every build is declared after the last RUN (an ARG is part of the
    # cache key of every RUN after its declaration).
    revision = index("ARG", r"^GIT_REVISION\b")
    assert revision > max(i for i, (ins, _) in enumerate(steps) if ins == "RUN"), "ARG GIT_REVISION after the last RUN"
    assert dockerfile_env().get("ZIPSCRIBE_GIT_REVISION") == "${GIT_REVISION}"
    # The same torch pin as `make install` (the CUDA wheel of the same version).
    assert dockerfile_args()["TORCH_SPEC"] == makefile_var("TORCH_SPEC")
    assert 'TORCH_SPEC="${TORCH_SPEC}"' in steps[deps][1] and "TORCH_INDEX=" in steps[deps][1]
    # Installed into the base image's Python (one interpreter, one Ray) with Ray pinned.
    for i in (deps, install):
        assert "VENV=/home/ray/anaconda3" in steps[i][1] and "PIP_CONSTRAINT=" in steps[i][1], steps[i][1][:80]
    assert "ray==${RAY_VERSION}" in steps[deps][1]
    users = [rest for instr, rest in steps if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert users[-1].split(":")[0].isdigit(), "numeric USER, so Kubernetes runAsNonRoot can verify it"
    assert index("USER", r"^1000") < deps, "dependencies and code installed as the image's user"
    for where, role, pod in pod_templates():
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and str(sc.get("runAsUser")) == users[-1].split(":")[0], where
    # No model inside the image.
    for instr, rest in steps:
        if instr in ("COPY", "ADD"):
            assert not re.search(r"\.(pt|pth|ckpt|onnx)\b|\bexp/", rest), f"{instr} {rest}: models are mounted or fetched, not baked in"


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker's context filter leaves `path` out (patterns from the root, `*` within a
    name, `**` across folders, a folder's pattern covers what is below it, `!` re-includes)."""
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                        for part in re.split(r"(\*\*)", pattern))
        regex = regex.replace(".*/", "(.*/)?")
        if re.fullmatch(regex + "(/.*)?", path):
            out = not negate
    return out


def test_dockerignore_leaves_out_what_git_ignores_and_keeps_what_the_image_needs():
    lines = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # Everything git ignores is a local artefact (environments, caches, demo and training data,
    # outputs): a sample path for each .gitignore pattern, anywhere it may occur.
    for raw in (REPO / ".gitignore").read_text().splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name = entry.strip("/").replace("*", "x")
        samples = [name + "/x"] if entry.startswith("/") else [name + "/x", f"pipeline/run/{name}/x"]
        for sample in samples:
            assert dockerignored(patterns, sample), f"Dockerfile.dockerignore lets {sample} in (.gitignore: {entry})"
    for sample in (".git/HEAD", "tests/test_infra.py", "spark-warehouse/x", "demo-data/cuts.jsonl.gz", "exp/epoch-30.pt",
                   "model/assets/demo/pretrained.pt", "model/assets/zf-work/epoch-1.pt", "runs-work/log", ".ruff_cache/x"):
        assert dockerignored(patterns, sample), f"Dockerfile.dockerignore lets {sample} in"
    # ... and nothing the image runs: the code, the manifests' scripts, the build inputs.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [f for f in tracked if f in ("pyproject.toml", "Makefile", "README.md")
              or (f.split("/")[0] in ("jobs", "pipeline", "model", "infra") and not re.search(r"\.(pt|pth|onnx|ckpt)$", f))]
    assert len(needed) > 50
    left_out = [f for f in needed if dockerignored(patterns, f)]
    assert not left_out, f"Dockerfile.dockerignore leaves out files the image needs: {left_out[:10]}"


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
# Versions: Ray's floor for token authentication, KubeRay's for authOptions.secretName
# --------------------------------------------------------------------------------------------

def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_ray_floor_allows_token_authentication():
    """Ray 2.52.0 brought token authentication (RAY_AUTH_MODE=token): an older client cannot
    submit to the clusters of infra/ (ray-project docs, ray-security/token-auth)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if re.match(r"ray\[", d)]
    floor = re.search(r">=\s*([\d.]+)", ray).group(1)
    assert version_tuple(floor) >= (2, 52), f"pyproject.toml allows {ray}: token authentication needs ray >= 2.52"
    assert version_tuple(floor) <= version_tuple(dockerfile_args()["RAY_VERSION"])


# A stand-in kubectl: logs its first two words, answers from FAKE_CRD_SECRETNAME (what the CRD
# says authOptions.secretName is) and FAKE_DEPLOYMENTS ("namespace/name image" lines, ';'-separated).
FAKE_KUBECTL = r"""#!/usr/bin/env bash
[[ "$1" == --request-timeout* ]] && shift
echo "$1 $2" >> "$FAKE_KUBECTL_LOG"
case "$1 $2" in
  "config current-context") echo test-cluster ;;
  "get crd") printf '%s' "${FAKE_CRD_SECRETNAME:-}" ;;
  "get deployments") [ -z "${FAKE_DEPLOYMENTS:-}" ] || tr ';' '\n' <<< "$FAKE_DEPLOYMENTS" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def fake_kubectl(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kubectl").write_text(FAKE_KUBECTL)
    (tmp_path / "bin" / "kubectl").chmod(0o755)
    log = tmp_path / "kubectl.jsonl"
    log.write_text("")

    def run(script: Path, crd: str, deployments: str, **extra: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_KUBECTL_LOG": str(log),
               "FAKE_CRD_SECRETNAME": crd, "FAKE_DEPLOYMENTS": deployments, **extra}
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)

    run.log = log
    return run


def test_check_kuberay_wants_1_6_operator_and_crds(fake_kubectl):
    script = K8S / "check-kuberay.sh"
    minimum = re.search(r"^MIN_VERSION=(\S+)$", script.read_text(), re.M).group(1)
    assert minimum == "1.6.0", "authOptions.secretName came with KubeRay 1.6.0 (1.5.1 has authOptions.mode only)"
    # the KubeRay v1.6.0 CRDs beside the checkout do have the field the script looks for
    schema = kuberay_schema("RayCluster")["properties"]["spec"]["properties"]["authOptions"]["properties"]
    assert schema["secretName"]["type"] == "string"
    operator = "kuberay/kuberay-operator quay.io/kuberay/operator:v{}"
    cases = [
        ("string", operator.format("1.6.0"), 0, "new enough"),
        ("string", operator.format("1.10.2") + ";kube-system/coredns registry.k8s.io/coredns:v1.11.1", 0, "KubeRay 1.10.2"),
        ("string", operator.format("1.5.1"), 1, "KubeRay 1.5.1"),
        ("", operator.format("1.6.0"), 1, "has no authOptions.secretName"),          # CRDs left behind by helm upgrade
        ("string", "ops/kuberay-operator mirror.example/kuberay/operator:sha-abc", 0, "no version"),
        ("string", "kube-system/coredns registry.k8s.io/coredns:v1.11.1", 2, "no KubeRay operator"),
    ]
    for crd, deployments, status, message in cases:
        result = fake_kubectl(script, crd, deployments)
        assert result.returncode == status and message in result.stderr, (deployments, crd, result.returncode, result.stderr)


def test_up_sh_stops_on_an_old_kuberay_before_starting_anything(fake_kubectl, tmp_path):
    state = tmp_path / "state"
    up = INFRA / "local" / "up.sh"
    env = {"ZS_STATE_DIR": str(state), "ZS_VENV": str(BIN.parent), "ZS_S3_PORT": "1", "ZS_RAY_PORT": "1"}
    result = fake_kubectl(up, "", "kuberay/kuberay-operator quay.io/kuberay/operator:v1.5.0", **env)
    assert result.returncode == 1 and "too old" in result.stderr, result.stderr
    assert not state.exists(), "nothing started"
    assert fake_kubectl.log.read_text().splitlines()[0] == "config current-context"
    skipped = fake_kubectl(up, "", "", ZS_KUBERAY_CHECK="x", **env)
    assert skipped.returncode == 1 and "must be auto, 1 or 0" in skipped.stderr


def test_readme_states_the_minimum_kuberay_and_ray():
    text = (REPO / "README.md").read_text()
    section = text[text.index("### On Kubernetes"):]
    section = section[:section.index("\n## ")]
    assert re.search(r"KubeRay (operator )?(>= ?|)1\.6\.0", section), "the README's Kubernetes section names KubeRay 1.6.0"
    assert "check-kuberay.sh" in section and "serviceaccount.yaml" in section
    for words in ("IRSA", "Workload Identity", "restricted"):
        assert words in section, f"the README's Kubernetes section says {words}"


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
    env.update(ZS_STATE_DIR=str(state), ZS_VENV=str(BIN.parent), ZS_NUM_CPUS="2", ZS_BUCKET="zs-local",
               ZS_KUBERAY_CHECK="0")   # whatever cluster this machine's kubectl points at
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

#!/usr/bin/env bash
# Build the zipscribe images with a tag no other build has, push them, and pin the manifests of
# infra/k8s/ to what was built (by digest when pushed).
#
#   infra/docker/build.sh --repo 123456789012.dkr.ecr.eu-west-1.amazonaws.com/zipscribe --push
#   git diff infra/k8s            # the image references it wrote; commit them with the release
#
# Tag: <version in pyproject.toml>-<12 hex of the git revision>-<flavor>, with -dirty.<UTC time>
# after the revision when the work tree has uncommitted changes (what was built is then no commit).
# With --push, the reference written into the manifests is <repo>:<tag>@sha256:<digest> from the
# registry: nodes pull exactly that image, whatever the tag points to later.
# Then `infra/k8s/render.py --image gpu=... --image cpu=...` writes it into
# infra/k8s/settings/ray.yaml and every manifest (the `# shared: images.*` lines).
#
# Options: --repo REGISTRY/NAME (default: the repository the settings name now), --flavor gpu|cpu
# (default both), --push, --no-pin (build and push only), and after `--` more `docker build`
# arguments (e.g. --build-arg TORCH_CUDA=cu126). DOCKER (default docker) and PYTHON (default the
# project's .venv/bin/python, else python3; needs PyYAML) may be set.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DOCKER="${DOCKER:-docker}"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3; [ -x "$REPO_DIR/.venv/bin/python" ] && PYTHON="$REPO_DIR/.venv/bin/python"
fi
say() { echo "build.sh: $*" >&2; }

repo="" push=0 pin=1 flavors=(gpu cpu) extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repo) repo="${2:?--repo needs a value}"; shift 2 ;;
    --flavor) flavors=("${2:?--flavor needs gpu or cpu}"); shift 2 ;;
    --push) push=1; shift ;;
    --no-pin) pin=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown option $1 (--help)"; exit 2 ;;
  esac
done
for flavor in "${flavors[@]}"; do
  case "$flavor" in gpu|cpu) ;; *) say "--flavor must be gpu or cpu"; exit 2 ;; esac
done

cd "$REPO_DIR"
settings=infra/k8s/settings/ray.yaml
if [ -z "$repo" ]; then   # the repository of the reference the settings hold now
  repo="$(sed -n 's/^  gpu: \([^@]*\):[^:@]*\(@.*\)\{0,1\}$/\1/p' "$settings" | head -n 1)"
  [ -n "$repo" ] || { say "cannot read images.gpu from $settings; pass --repo"; exit 2; }
fi
version="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD)"
rev="${revision:0:12}"
if [ -n "$(git status --porcelain --untracked-files=normal)" ]; then
  rev="$rev-dirty.$(date -u +%Y%m%d%H%M%S)"
  say "the work tree has uncommitted changes: tag ...-$rev-..."
fi

pins=()
for flavor in "${flavors[@]}"; do
  tag="$repo:$version-$rev-$flavor"
  say "building $tag"
  "$DOCKER" build -f infra/docker/Dockerfile --build-arg FLAVOR="$flavor" \
    --build-arg GIT_REVISION="$revision" -t "$tag" "${extra[@]}" .
  ref="$tag"
  if [ "$push" = 1 ]; then
    "$DOCKER" push "$tag"
    digest="$("$DOCKER" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$tag" \
              | sed -n "s|^$repo@\(sha256:[0-9a-f]\{64\}\)\$|\1|p" | head -n 1)"
    [ -n "$digest" ] || { say "no digest of $repo for $tag after the push"; exit 1; }
    ref="$tag@$digest"
  fi
  say "built $ref"
  pins+=(--image "$flavor=$ref")
done

if [ "$pin" = 1 ]; then
  [ "$push" = 1 ] || say "not pushed: the manifests name the tag only (it exists on this machine alone)"
  "$PYTHON" infra/k8s/render.py "${pins[@]}"
fi

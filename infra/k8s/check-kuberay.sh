#!/usr/bin/env bash
# Is the KubeRay of the current kubectl context new enough for infra/k8s (KubeRay >= 1.6.0)?
#
#   infra/k8s/check-kuberay.sh            # before `kubectl apply -f infra/k8s/...`
#
# The manifests turn on Ray's token authentication with authOptions {mode: token, secretName}.
# KubeRay's CRDs <= 1.5.0 have no authOptions and 1.5.1-1.5.x no authOptions.secretName; the API
# server prunes fields its CRD does not know, without a word under `kubectl apply --validate=false`
# (or where field validation is off): the cluster then starts with the job API open (<= 1.5.0), or
# with a token of KubeRay's own that the CronJob and the RayJob submitter do not have (1.5.x).
# Both places are checked, because `helm upgrade` leaves the CRDs as they were:
#   the CRDs   rayclusters.ray.io and rayjobs.ray.io must know authOptions.secretName;
#   operator   the tag of the kuberay-operator Deployment's image must be >= 1.6.0 (an image
#              whose tag is no version is reported and left to the CRD check).
# Settings: KUBERAY_NAMESPACE (the operator's namespace; default: look in all namespaces),
# KUBECTL (default kubectl). Exit status: 0 new enough; 1 too old (says what); 2 could not tell
# (no kubectl, no cluster, no permission to read CRDs or Deployments, no operator found).
set -uo pipefail

MIN_VERSION=1.6.0
KUBECTL="${KUBECTL:-kubectl}"
say() { echo "check-kuberay.sh: $*" >&2; }

if ! command -v "$KUBECTL" >/dev/null 2>&1; then
  say "no $KUBECTL on PATH: cannot check the KubeRay operator"; exit 2
fi
kc() { "$KUBECTL" --request-timeout=10s "$@"; }

version_ge() {   # version_ge A B: A >= B (numeric dotted versions)
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]
}

status=0
# --- the CRDs -----------------------------------------------------------------------------
declare -A crd_path=(
  [rayclusters.ray.io]='.properties.spec.properties.authOptions.properties.secretName.type'
  [rayjobs.ray.io]='.properties.spec.properties.rayClusterSpec.properties.authOptions.properties.secretName.type'
)
for crd in rayclusters.ray.io rayjobs.ray.io; do
  if ! found="$(kc get crd "$crd" -o "jsonpath={.spec.versions[?(@.name==\"v1\")].schema.openAPIV3Schema${crd_path[$crd]}}" 2>&1)"; then
    say "cannot read the CRD $crd: ${found//$'\n'/ }"; exit 2
  fi
  if [ "$found" != string ]; then
    say "the CRD $crd has no authOptions.secretName (KubeRay < $MIN_VERSION): the API server would drop it and Ray's token authentication with it; install the CRDs of KubeRay >= $MIN_VERSION (helm upgrade does not update CRDs: kubectl apply --server-side -f the chart's crds/)"
    status=1
  fi
done

# --- the operator -------------------------------------------------------------------------
scope=(--all-namespaces)
[ -n "${KUBERAY_NAMESPACE:-}" ] && scope=(--namespace "$KUBERAY_NAMESPACE")
if ! listing="$(kc get deployments "${scope[@]}" -o 'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{range .spec.template.spec.containers[*]} {.image}{end}{"\n"}{end}' 2>&1)"; then
  say "cannot list Deployments (${listing//$'\n'/ }); set KUBERAY_NAMESPACE to the operator's namespace"; exit 2
fi
operators=0
while read -r name images; do
  [ -n "$name" ] || continue
  for image in $images; do
    case "$name $image" in *kuberay*) ;; *) continue ;; esac
    case "$image" in */operator:* | *kuberay-operator:* | operator:*) ;; *) continue ;; esac
    operators=$((operators + 1))
    tag="${image##*:}"; tag="${tag%%@*}"; version="${tag#v}"
    if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
      say "$name runs $image, whose tag is no version: the CRD check above decides"
    elif version_ge "$version" "$MIN_VERSION"; then
      say "$name runs KubeRay $version (>= $MIN_VERSION)"
    else
      say "$name runs KubeRay $version: infra/k8s needs >= $MIN_VERSION (authOptions.secretName); upgrade the operator and its CRDs"
      status=1
    fi
  done
done <<< "$listing"
if [ "$operators" = 0 ]; then
  say "no KubeRay operator Deployment found${KUBERAY_NAMESPACE:+ in namespace $KUBERAY_NAMESPACE}"
  [ "$status" = 1 ] || status=2
fi
[ "$status" = 0 ] && say "KubeRay is new enough for infra/k8s"
exit "$status"

#!/usr/bin/env bash
# The local demo: starts a real control plane with the process-running node, installs the
# Ocellus CRDs, applies the examples and shows what Kubernetes now serves.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

hack/setup.sh tools
hack/setup.sh cluster
export PATH="$OCELLUS_CACHE/bin:$PATH"

log "building Ocellus"
cargo build --locked -q --bins

work=$(mktemp -d)
kc="$work/kubeconfig"
cat > "$work/images.yaml" <<YAML
images:
  - image: ghcr.io/ocellus-dev/ocellus-operator
    binary: $PWD/target/debug/ocellus-operator
  - image: ghcr.io/ocellus-dev/ocellus-apiserver
    binary: $PWD/target/debug/ocellus-apiserver
  - image: busybox
YAML
log "starting the local cluster"
target/debug/ocellus-localcluster --kubeconfig "$kc" --image-map "$work/images.yaml" --gpus 1 \
  --gpu-product NVIDIA-Demo-GPU > "$work/cluster.log" 2>&1 &
cluster_pid=$!
trap 'kill -TERM $cluster_pid 2>/dev/null; wait $cluster_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do [ -f "$kc" ] && break; kill -0 $cluster_pid 2>/dev/null || { cat "$work/cluster.log"; die "the cluster did not start"; }; sleep 0.5; done
[ -f "$kc" ] || die "the cluster did not start in 60 s"
k() { kubectl --kubeconfig "$kc" "$@"; }

k get nodes -L nvidia.com/gpu.product
log "installing the CRDs (1.20 predates CEL: --validate=false, the server drops the rules; helm gets --skip-crds)"
k apply --validate=false -f crds/yaml/
k wait --for=condition=Established --timeout=60s crd --all >/dev/null
log "kubectl explain trainingjob.spec.hyperparameters.imgsz"
for _ in $(seq 1 50); do k explain trainingjob.spec.hyperparameters.imgsz 2>/dev/null && break; sleep 0.2; done
log "applying examples/"
k create namespace demo
k apply -n demo --validate=false -f examples/
k get ocellus -n demo
log "installing the Helm chart (operator and apiserver run as pods under their own ServiceAccounts)"
helm --kubeconfig "$kc" install ocellus charts/ocellus --skip-crds -n ocellus-system --create-namespace \
  --set s3.accessKeyId=demo --set s3.secretAccessKey=demo-secret-key --set s3.endpoint=http://127.0.0.1:9 \
  --wait --timeout 90s >/dev/null
k get pods -n ocellus-system -o wide
k logs -n ocellus-system deploy/ocellus-operator | tail -2
log "an unsupported export format is refused by the API server:"
printf 'apiVersion: ocellus.dev/v1alpha1\nkind: Export\nmetadata: {name: bad}\nspec:\n  source: {trainingJob: {name: t}}\n  format: coreml\n' \
  | k apply -n demo --validate=false -f - || true
log "done; stopping the cluster"

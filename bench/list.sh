#!/usr/bin/env bash
# REST list benchmark (#13): `GET /api/datasets/{owner}` of N Datasets through the apiserver
# (answered from its reflector cache) against the same list straight from kube-apiserver, in the
# same run, with the same client (ocellus-loadgen) and concurrency. The peer at its best: a list
# with resourceVersion=0, which kube-apiserver serves from its watch cache, not etcd. Release
# builds; prints a Markdown table for docs/benchmarks.md.
#   N=1000 CONCURRENCY=16 REQUESTS=4000 bench/list.sh
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
N=${N:-1000}
CONCURRENCY=${CONCURRENCY:-16}
REQUESTS=${REQUESTS:-4000}
hack/setup.sh cluster >/dev/null
cargo build -q --release -p ocellus-apiserver -p ocellus-tests --bin ocellus-apiserver --bin ocellus-loadgen --bin ocellus-localcluster
export PATH="$OCELLUS_CACHE/bin:$PATH"

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT
local_cluster --gpus 0
kubectl create namespace team-a >/dev/null
log "creating $N Datasets"
python3 - "$N" >"$work/datasets.yaml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print(f"""---
apiVersion: ocellus.dev/v1alpha1
kind: Dataset
metadata:
  name: ds-{i:05d}
  labels: {{app.kubernetes.io/managed-by: ocellus-apiserver}}
  annotations: {{ocellus.dev/display-name: "Dataset {i}"}}
spec:
  task: detect
  source: {{}}""")
PY
kubectl apply -n team-a --validate=false -f "$work/datasets.yaml" >/dev/null

key="ul_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
OCELLUS_LISTEN_ADDR=127.0.0.1:$port OCELLUS_KEYS_NAMESPACE=default OCELLUS_BOOTSTRAP_API_KEY=$key \
  OCELLUS_BOOTSTRAP_API_KEY_NAMESPACE=team-a OCELLUS_LOG=warn \
  OCELLUS_API_RATE_LIMITS=default=unlimited \
  target/release/ocellus-apiserver >"$work/apiserver.log" 2>&1 &
pids+=($!)
ours="http://127.0.0.1:$port/api/datasets/team-a"
for _ in $(seq 1 300); do
  total=$(curl -sf -H "Authorization: Bearer $key" "$ours?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || true)
  [ "$total" = "$N" ] && break
  sleep 0.2
done
[ "$total" = "$N" ] || die "the apiserver lists ${total:-nothing}, not $N: $(tail -5 "$work/apiserver.log")"

server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
token=$(kubectl config view --raw -o jsonpath='{.users[0].user.token}')
kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"
peer="$server/apis/ocellus.dev/v1alpha1/namespaces/team-a/datasets?resourceVersion=0"
# Both answers hold all N items (the apiserver's without a limit).
curl -sf -H "Authorization: Bearer $key" "$ours" | python3 -c "import json,sys; d=json.load(sys.stdin); assert len(d['datasets'])==$N, len(d['datasets'])"
curl -sf --cacert "$work/ca.crt" -H "Authorization: Bearer $token" "$peer" | python3 -c "import json,sys; d=json.load(sys.stdin); assert len(d['items'])==$N, len(d['items'])"
bytes_ours=$(curl -sf -H "Authorization: Bearer $key" "$ours" | wc -c)
bytes_peer=$(curl -sf --cacert "$work/ca.crt" -H "Authorization: Bearer $token" "$peer" | wc -c)

run() { target/release/ocellus-loadgen --get --concurrency "$CONCURRENCY" --requests "$REQUESTS" --warmup 200 --threads 1 "$@"; }
log "ours: GET $ours ($CONCURRENCY in flight, $REQUESTS requests)"
run --url "$ours" --header "Authorization: Bearer $key" >"$work/ours.json"
log "peer: GET $peer"
run --url "$peer" --ca "$work/ca.crt" --header "Authorization: Bearer $token" >"$work/peer.json"

python3 - "$work" "$N" "$CONCURRENCY" "$bytes_ours" "$bytes_peer" <<'PY'
import json, sys
work, n, c, bo, bp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
o, p = (json.load(open(f"{work}/{x}.json")) for x in ("ours", "peer"))
assert o["errors"] == 0 and p["errors"] == 0, (o, p)
print(f"| {n} datasets, {c} in flight | requests/s | p50 ms | p99 ms | body |")
print("| --- | --- | --- | --- | --- |")
print(f"| apiserver `GET /api/datasets/team-a` | {o['requests_per_second']:.0f} | {o['p50_ms']:.1f} | {o['p99_ms']:.1f} | {bo/1024:.0f} KiB |")
print(f"| kube-apiserver list (`resourceVersion=0`) | {p['requests_per_second']:.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {bp/1024:.0f} KiB |")
print(f"| ratio (ours / peer) | {o['requests_per_second']/p['requests_per_second']:.2f}x | | | |")
PY

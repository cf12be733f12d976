#!/usr/bin/env bash
# Operator scale benchmark (#11): N TrainingJobs created at once, each asking for 2 GPUs on the
# local cluster's 1-GPU node.
#   Ours: the operator (release build) reconciling them: time until every TrainingJob has its Job
#   and reports the scheduler's Unschedulable in status; p50/p99 reconcile duration from the
#   operator's own histogram (interpolated within buckets, as Prometheus' histogram_quantile);
#   the operator's peak RSS (VmHWM).
#   Peer, in the same run, measured the same way: N plain batch/v1 Jobs with the same pod spec
#   handed straight to Kubernetes' Job controller; time until every pod is Unschedulable. It is
#   what the cluster itself needs for that outcome, with no operator in front.
# Both sides are created with one `kubectl create -f` and polled by the same client every 0.5 s.
# kube-controller-manager and kube-scheduler get QPS (default 20 and 50) raised as large
# clusters configure them, so that the peer is at its best and the control plane is not the
# bottleneck of either side. Prints a Markdown table for docs/benchmarks.md.
#   N=1000 QPS=500 bench/operator-scale.sh
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
N=${N:-1000}
QPS=${QPS:-500}
hack/setup.sh cluster >/dev/null
hack/setup.sh python >/dev/null
cargo build -q --release -p ocellus-operator -p ocellus-trainer -p ocellus-tests \
  --bin ocellus-operator --bin ocellus-trainer --bin ocellus-localcluster --bin ocellus-fixtures
export PATH="$OCELLUS_CACHE/bin:$PATH"

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; { [ -z "${OPERATOR_LOG:-}" ] || cp "$work/operator.log" /tmp/operator-scale.log || true; }; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# S3 (moto) with the dataset archive the Dataset ingests.
s3_port=$(free_port)
moto_server -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
pids+=($!)
target/release/ocellus-fixtures --images 16 --size 64 --out "$work/tiny" >/dev/null
(cd "$work/tiny" && python3 -c 'import os, zipfile
with zipfile.ZipFile("../tiny.zip", "w") as z:
    for root, _, files in os.walk("."):
        for f in files:
            z.write(os.path.join(root, f))')
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$s3_port) 2>/dev/null && break; sleep 0.1; done
python3 - "$s3_port" "$work/tiny.zip" <<'PY'
import sys, urllib.request as u
base = f"http://127.0.0.1:{sys.argv[1]}"
for b in ("ocellus", "ocellus-demo"):
    u.urlopen(u.Request(f"{base}/{b}", method="PUT"))
# A Content-Type of its own: urllib's default (a form) makes moto parse the body as one.
u.urlopen(u.Request(f"{base}/ocellus-demo/tiny.zip", data=open(sys.argv[2], "rb").read(), method="PUT",
                    headers={"Content-Type": "application/zip"}))
PY

cat >"$work/images.yaml" <<EOF
images:
  - image: ghcr.io/ocellus-dev/ocellus-trainer
    binary: $PWD/target/release/ocellus-trainer
EOF
local_cluster --gpus 1 --gpu-product NVIDIA-Test-GPU --image-map "$work/images.yaml" --control-plane-qps "$QPS"
for ns in bench peer; do kubectl create namespace "$ns" >/dev/null; done
kubectl -n bench create secret generic ocellus-s3 --from-literal=AWS_ACCESS_KEY_ID=bench \
  --from-literal=AWS_SECRET_ACCESS_KEY=bench >/dev/null

metrics_port=$(free_port)
OCELLUS_METRICS_ADDR=127.0.0.1:$metrics_port OCELLUS_LOG=${OPERATOR_LOG:-warn} \
  OCELLUS_TRAINER_IMAGE=ghcr.io/ocellus-dev/ocellus-trainer:bench \
  OCELLUS_S3_ENDPOINT=http://127.0.0.1:$s3_port OCELLUS_S3_BUCKET=ocellus \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench POD_NAME=bench POD_NAMESPACE=default \
  target/release/ocellus-operator >"$work/operator.log" 2>&1 &
operator=$!
pids+=($operator)

kubectl -n bench apply --validate=false -f - >/dev/null <<'EOF'
apiVersion: ocellus.dev/v1alpha1
kind: Dataset
metadata: {name: tiny}
spec:
  task: detect
  classNames: [circle, square, triangle]
  source: {s3: {uri: "s3://ocellus-demo/tiny.zip"}}
EOF
kubectl -n bench wait --for=condition=Ready --timeout=180s dataset/tiny >/dev/null \
  || die "the Dataset did not become Ready: $(kubectl -n bench get dataset tiny -o yaml | tail -20)"

server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
token=$(kubectl config view --raw -o jsonpath='{.users[0].user.token}')
kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"

# Creates `$2` (N objects) with one kubectl call and polls until `$1` (pods | trainingjobs) of
# namespace `$3` are all Unschedulable; prints {"create": s, "all": s} from the start of creation.
create_and_wait() {
  python3 - "$1" "$2" "$3" "$N" "$server" "$token" "$work/ca.crt" <<'PY'
import json, ssl, subprocess, sys, time, urllib.request as u
kind, manifest, ns, n, server, token, ca = sys.argv[1:8]
n = int(n)
ctx = ssl.create_default_context(cafile=ca)
path = {"pods": f"/api/v1/namespaces/{ns}/pods",
        "trainingjobs": f"/apis/ocellus.dev/v1alpha1/namespaces/{ns}/trainingjobs"}[kind]
jobs_path = f"/apis/batch/v1/namespaces/{ns}/jobs"
if kind == "trainingjobs":
    jobs_path += "?labelSelector=ocellus.dev%2Fkind%3DTrainingJob"
def get(p):
    req = u.Request(server + p, headers={"Authorization": f"Bearer {token}"})
    return json.load(u.urlopen(req, context=ctx))
def unschedulable(o):
    if kind == "pods":
        return any(c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
                   for c in o.get("status", {}).get("conditions", []))
    f = (o.get("status") or {}).get("failure") or {}
    return f.get("podCause") == "Unschedulable"
start = time.monotonic()
subprocess.run(["kubectl", "create", "-n", ns, "--validate=false", "-f", manifest], check=True, stdout=subprocess.DEVNULL)
created = time.monotonic() - start
while True:
    items = get(path)["items"]
    done = sum(1 for o in items if unschedulable(o))
    if done == n:
        jobs = len(get(jobs_path)["items"])
        assert jobs == n, f"{jobs} Jobs for {n} objects"
        break
    assert time.monotonic() - start < 900, f"{done} of {n} Unschedulable after 900 s"
    time.sleep(0.5)
out = {"create": created, "all": time.monotonic() - start}
if kind == "trainingjobs":
    # Where the time went, per TrainingJob (whole seconds, as the API server stamps them): from its
    # creation to its pod's Unschedulable, and from that to the TrainingJob's status saying so (the
    # operator's last status write, as its managedFields entry records it: nothing changes after).
    from datetime import datetime
    t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    pods = {p["metadata"]["labels"].get("ocellus.dev/name"): p for p in get(f"/api/v1/namespaces/{ns}/pods")["items"]}
    to_pod, to_status = [], []
    for o in get(path)["items"]:
        name = o["metadata"]["name"]
        written = max(t(m["time"]) for m in o["metadata"]["managedFields"] if m["manager"] == "ocellus-operator/trainingjob")
        pod = next(c for c in pods[name]["status"]["conditions"] if c["type"] == "PodScheduled")
        to_pod.append(t(pod["lastTransitionTime"]) - t(o["metadata"]["creationTimestamp"]))
        to_status.append(written - t(pod["lastTransitionTime"]))
    q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]
    out["to_pod"] = [q(to_pod, 0.5), q(to_pod, 0.99)]
    out["to_status"] = [q(to_status, 0.5), q(to_status, 0.99)]
print(json.dumps(out))
PY
}

python3 - "$N" "$work" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
pod = """    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: trainer
          image: ghcr.io/ocellus-dev/ocellus-trainer:bench
          args: [version]
          resources: {limits: {nvidia.com/gpu: 2}}"""
with open(f"{work}/peer.yaml", "w") as f:
    for i in range(n):
        f.write(f"---\napiVersion: batch/v1\nkind: Job\nmetadata: {{name: peer-{i:05d}}}\nspec:\n  backoffLimit: 0\n  template:\n{pod}\n")
with open(f"{work}/ours.yaml", "w") as f:
    for i in range(n):
        f.write(f"""---
apiVersion: ocellus.dev/v1alpha1
kind: TrainingJob
metadata: {{name: tj-{i:05d}}}
spec:
  datasetRef: {{name: tiny}}
  model: {{architecture: yolov8n}}
  hyperparameters: {{epochs: 1, imgsz: 64, batch: 8}}
  resources: {{gpu: {{count: 2}}}}
""")
PY

log "peer: $N Jobs straight to Kubernetes' Job controller"
create_and_wait pods "$work/peer.yaml" peer >"$work/peer.json"
kubectl delete namespace peer --wait --timeout=600s >/dev/null
curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics-before.txt"
log "ours: $N TrainingJobs through the operator"
create_and_wait trainingjobs "$work/ours.yaml" bench >"$work/ours.json"
curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics-after.txt"
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$operator/status")

python3 - "$work" "$N" "$rss_kib" "$QPS" <<'PY'
import json, re, sys
work, n, rss_kib, qps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ours, peer = (json.load(open(f"{work}/{x}.json")) for x in ("ours", "peer"))
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'ocellus_operator_reconcile_duration_seconds_bucket\{controller="trainingjob",le="([^"]+)"\} (\S+)', line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
    return out
before, after = buckets(f"{work}/metrics-before.txt"), buckets(f"{work}/metrics-after.txt")
cum = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
total = cum[-1][1]
def quantile(q):
    # Prometheus' histogram_quantile: linear within the bucket that holds the rank.
    rank, lo, below = q * total, 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / max(c - below, 1e-9))
        lo, below = le, c
    return lo
p50, p99 = quantile(0.5) * 1000, quantile(0.99) * 1000
print(f"| {n} objects asking for 2 GPUs on a 1-GPU node (control-plane QPS {qps}) | created (s) | all Unschedulable (s) |")
print("| --- | ---: | ---: |")
print(f"| Kubernetes' Job controller, plain Jobs (peer) | {peer['create']:.1f} | {peer['all']:.1f} |")
print(f"| Ocellus operator, TrainingJobs (Job + status each) | {ours['create']:.1f} | {ours['all']:.1f} |")
print()
print(f"Ratio: ours / peer = {ours['all'] / peer['all']:.2f}x. Operator: {int(total)} TrainingJob reconciles, "
      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; peak RSS {rss_kib / 1024:.0f} MiB. Per TrainingJob (p50/p99, "
      f"whole seconds): created to its pod Unschedulable {ours['to_pod'][0]:.0f}/{ours['to_pod'][1]:.0f} s, "
      f"then to its status saying so {ours['to_status'][0]:.0f}/{ours['to_status'][1]:.0f} s.")
PY

#!/usr/bin/env bash
# Trainer benchmark: `ocellus-trainer train` (release, CPU) against Ultralytics training
# yolov8n.yaml from scratch, same synthetic dataset, epochs, imgsz and batch, in the same run.
#   N=300 EPOCHS=10 IMGSZ=160 BATCH=16 bench/train.sh
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
N=${N:-300}; EPOCHS=${EPOCHS:-10}; IMGSZ=${IMGSZ:-160}; BATCH=${BATCH:-16}
hack/setup.sh python
source <(hack/setup.sh torch-env)
cargo build -q --release -p ocellus-trainer --features torch -p ocellus-tests --bins
peer_env=$(bench/setup-peer.sh)

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$OCELLUS_CACHE/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
target/release/ocellus-fixtures --images "$N" --size "$IMGSZ" --out "$work/ds" >/dev/null
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/bench', method='PUT'))"
export OCELLUS_S3_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench OCELLUS_S3_BUCKET=bench
target/release/ocellus-trainer ingest --source "$work/ds" --prefix b/datasets/shapes --name shapes --task detect --work-dir "$work/i" >/dev/null

log "ours: ocellus-trainer train"
t0=$(date +%s.%N)
target/release/ocellus-trainer train --manifest s3://bench/b/datasets/shapes/manifest.ndjson --output-prefix b/trainingjobs/t \
  --epochs "$EPOCHS" --imgsz "$IMGSZ" --batch "$BATCH" --device cpu --work-dir "$work/t" >"$work/ours.jsonl"
t1=$(date +%s.%N)
log "peer: Ultralytics YOLO('yolov8n.yaml').train"
(eval "$peer_env"; python bench/ultralytics_train.py "$work/ds/data.yaml" "$EPOCHS" "$IMGSZ" "$BATCH" "$work/peer" 2>/dev/null | tail -1 >"$work/peer.json")

python3 - "$work" "$N" "$EPOCHS" "$IMGSZ" "$BATCH" "$t0" "$t1" <<'PY'
import json, sys
work, n, epochs, imgsz, batch, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]), float(sys.argv[7])
lines = [json.loads(l) for l in open(f"{work}/ours.jsonl")]
done = lines[-1]
assert done["event"] == "done", done
train_imgs = next(l for l in lines if l.get("phase") == "data")["train"]
peer = json.load(open(f"{work}/peer.json"))
ours_ips = train_imgs * epochs / (t1 - t0)
peer_ips = train_imgs * epochs / peer["seconds"]
print(f"| {n} images ({train_imgs} train), {epochs} epochs, imgsz {imgsz}, batch {batch}, CPU | train images/s (incl. val) | mAP50 | mAP50-95 |")
print("| --- | ---: | ---: | ---: |")
print(f"| Ultralytics yolov8n.yaml (peer) | {peer_ips:.1f} | {peer['map50']:.3f} | {peer['map50_95']:.3f} |")
print(f"| ocellus-trainer yolov8n | {ours_ips:.1f} | {done['metrics']['map50']:.3f} | {done['metrics']['map50_95']:.3f} |")
print()
print(f"Ratio: throughput {ours_ips / peer_ips:.2f}x the peer")
PY

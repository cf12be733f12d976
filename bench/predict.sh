#!/usr/bin/env bash
# Predictor benchmark: ocellus-predictor (release, ONNX Runtime CPU) against (a) Ultralytics
# YOLO(model.onnx).predict and (b) onnxruntime Python, both behind FastAPI/uvicorn, serving the
# same ONNX model (our trainer's yolov8n export) the same JPEGs over HTTP, in the same run.
#   IMGSZ=640 REQUESTS=200 ROUNDS=3 bench/predict.sh
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
IMGSZ=${IMGSZ:-640}; REQUESTS=${REQUESTS:-200}; ROUNDS=${ROUNDS:-3}; TRAIN_IMGSZ=${TRAIN_IMGSZ:-320}; EPOCHS=${EPOCHS:-5}
hack/setup.sh python
source <(hack/setup.sh torch-env)
cargo build -q --release -p ocellus-trainer --features torch -p ocellus-predictor -p ocellus-tests --bins
peer_env=$(bench/setup-peer.sh)

# Kept between runs: REUSE=1 serves the model and images of the previous run.
work="$OCELLUS_CACHE/bench-predict-$IMGSZ"
[ "${REUSE:-0}" = 1 ] && [ -f "$work/model.onnx" ] || { rm -rf "$work"; mkdir -p "$work"; }
rm -f "$work/results.jsonl"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null
  if [ "$rc" != 0 ]; then for f in "$work"/*.log; do echo "== $f"; tail -20 "$f"; done >&2; fi
}
trap cleanup EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitfor() { for _ in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; die "$1 did not come up"; }

# A model worth serving: yolov8n trained briefly on the synthetic shapes, exported at IMGSZ.
if [ ! -f "$work/model.onnx" ]; then
port=$(freeport)
"$OCELLUS_CACHE/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 & pids+=($!)
target/release/ocellus-fixtures --images 200 --size "$TRAIN_IMGSZ" --out "$work/ds" >/dev/null
target/release/ocellus-fixtures --images 64 --size "$IMGSZ" --seed 99 --out "$work/test" >/dev/null
mkdir -p "$work/images" && cp "$work"/test/images/*/*.jpg "$work/images/"
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/bench', method='PUT'))"
export OCELLUS_S3_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench OCELLUS_S3_BUCKET=bench
target/release/ocellus-trainer ingest --source "$work/ds" --prefix b/datasets/shapes --name shapes --task detect --work-dir "$work/i" >/dev/null
log "training the model to serve ($EPOCHS epochs at $TRAIN_IMGSZ)"
target/release/ocellus-trainer train --manifest s3://bench/b/datasets/shapes/manifest.ndjson --output-prefix b/t \
  --epochs "$EPOCHS" --imgsz "$TRAIN_IMGSZ" --batch 16 --device cpu --work-dir "$work/t" >/dev/null
target/release/ocellus-trainer export --weights s3://bench/b/t/weights/last.safetensors --format onnx --dynamic \
  --imgsz "$IMGSZ" --output "$work/model.onnx" --work-dir "$work/e" >/dev/null
kill "${pids[0]}"; pids=()
fi

run_load() { # url concurrency
  target/release/ocellus-loadgen --url "$1" --images "$work/images" --concurrency "$2" --requests "$REQUESTS" --warmup 16
}
results="$work/results.jsonl"
record() { # name concurrency url
  echo "{\"server\": \"$1\", \"round\": $round, \"result\": $(run_load "$3" "$2")}" >>"$results"
}
# Each server is started in this shell (not a subshell) so that it can be stopped; PORT is its port.
serve_ours() { # [flags]
  PORT=$(freeport)
  ORT_DYLIB_PATH="$OCELLUS_CACHE/lib/libonnxruntime.so" target/release/ocellus-predictor --log-level warn serve --model "$work/model.onnx" \
    --listen "127.0.0.1:$PORT" --queue-capacity 256 "$@" >"$work/ours.log" 2>&1 &
  pids+=($!); waitfor "http://127.0.0.1:$PORT/readyz"
}
serve_peer() { # mode
  PORT=$(freeport)
  (eval "$peer_env"; MODE=$1 MODEL="$work/model.onnx" IMGSZ=$IMGSZ exec uvicorn --app-dir bench peer_server:app --host 127.0.0.1 --port "$PORT" \
     --log-level warning) >"$work/peer-$1.log" 2>&1 &
  pids+=($!); waitfor "http://127.0.0.1:$PORT/docs"
}
stop_last() { local last=$((${#pids[@]} - 1)); kill "${pids[$last]}" 2>/dev/null || true; wait "${pids[$last]}" 2>/dev/null || true; unset "pids[$last]"; }

# The servers take turns, ROUNDS times; each row is the median over the rounds (this machine's
# speed drifts by 10-20% over minutes, which would otherwise favour whoever ran at a good time).
OURS="ocellus-predictor"; ONE="ocellus-predictor, --instances 1"; ORT="onnxruntime Python + FastAPI"; ULT="Ultralytics YOLO(onnx).predict + FastAPI"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: ours (default: elastic CPU lanes)"; serve_ours
  for c in 1 16; do record "$OURS" $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  log "round $round/$ROUNDS: ours, one model copy (max batch 8, then 1)"; serve_ours --instances 1 --max-batch 8 --max-delay-ms 2
  for c in 1 16; do record "$ONE, max batch 8" $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  serve_ours --instances 1 --max-batch 1; record "$ONE, max batch 1" 16 "http://127.0.0.1:$PORT/predict"; stop_last
  log "round $round/$ROUNDS: peer (b) onnxruntime + FastAPI"; serve_peer ort
  for c in 1 16; do record "$ORT" $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  log "round $round/$ROUNDS: peer (a) Ultralytics"; serve_peer ultralytics
  for c in 1 16; do record "$ULT" $c "http://127.0.0.1:$PORT/predict"; done; stop_last
done

python3 - "$results" "$IMGSZ" "$REQUESTS" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = {}
for r in rows:
    runs.setdefault((r["server"], r["result"]["concurrency"]), []).append(r["result"])
med = lambda xs, k: statistics.median(x[k] for x in xs)
print(f"| server ({sys.argv[3]} JPEG requests, {sys.argv[2]}x{sys.argv[2]}, CPU, median of {sys.argv[4]} rounds) | concurrency | images/s | p50 ms | p99 ms | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for (name, c), xs in runs.items():
    print(f"| {name} | {c} | {med(xs, 'images_per_second'):.1f} | {med(xs, 'p50_ms'):.1f} | {med(xs, 'p99_ms'):.1f} | {sum(x['errors'] for x in xs)} |")
ips = {k: med(xs, "images_per_second") for k, xs in runs.items()}
print()
OURS, ONE = "ocellus-predictor", "ocellus-predictor, --instances 1"
ORT, ULT = "onnxruntime Python + FastAPI", "Ultralytics YOLO(onnx).predict + FastAPI"
for c in (1, 16):
    print(f"- concurrency {c}: {ips[(OURS, c)] / ips[(ULT, c)]:.2f}x (a) Ultralytics, {ips[(OURS, c)] / ips[(ORT, c)]:.2f}x (b) onnxruntime + FastAPI")
print(f"- batching gain of one model copy at concurrency 16: {ips[(ONE + ', max batch 8', 16)] / ips[(ONE + ', max batch 1', 16)]:.2f}x (max batch 8 vs 1)")
print(f"- elastic lanes vs one copy (max batch 8): {ips[(OURS, 1)] / ips[(ONE + ', max batch 8', 1)]:.2f}x at concurrency 1, {ips[(OURS, 16)] / ips[(ONE + ', max batch 8', 16)]:.2f}x at 16")
PY

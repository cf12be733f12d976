#!/usr/bin/env bash
# Predictor benchmark: ocellus-predictor (release, ONNX Runtime CPU) against (a) Ultralytics
# YOLO(model.onnx).predict and (b) onnxruntime Python, both behind FastAPI/uvicorn, serving the
# same ONNX model (our trainer's yolov8n export) the same JPEGs over HTTP, in the same run.
#   IMGSZ=640 REQUESTS=200 ROUNDS=3 bench/predict.sh
# Before timing: one ONNX Runtime version for all three; the same detections from all three
# (bench/agreement.py), or no timing at all; each peer's uvicorn workers (and (b)'s intra-op
# threads, cores / workers) chosen by measuring them (SWEEP_REQUESTS per setting, up to
# MAX_WORKERS workers), per concurrency.
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
IMGSZ=${IMGSZ:-640}; REQUESTS=${REQUESTS:-200}; ROUNDS=${ROUNDS:-3}; TRAIN_IMGSZ=${TRAIN_IMGSZ:-320}; EPOCHS=${EPOCHS:-20}
SWEEP_REQUESTS=${SWEEP_REQUESTS:-$REQUESTS}; CORES=$(nproc); MAX_WORKERS=${MAX_WORKERS:-$CORES}
hack/setup.sh python
source <(hack/setup.sh torch-env)
cargo build -q --release -p ocellus-trainer --features torch -p ocellus-predictor -p ocellus-tests --bins
peer_env=$(bench/setup-peer.sh)

# One ONNX Runtime: the predictor loads hack/setup.sh's wheel's library, the peers import the bench venv's.
ours_ort=$(readlink -f "$OCELLUS_CACHE/lib/libonnxruntime.so"); ours_ort=${ours_ort##*.so.}
peer_ort=$(eval "$peer_env"; python -c 'import onnxruntime; print(onnxruntime.__version__)')
[ "$ours_ort" = "$peer_ort" ] \
  || die "ONNX Runtime $ours_ort (predictor) differs from $peer_ort (peers); rm -rf $OCELLUS_CACHE/bench-venv to reinstall"
log "ONNX Runtime $ours_ort for all three servers"

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

run_load() { # url concurrency [requests]
  target/release/ocellus-loadgen --url "$1" --images "$work/images" --concurrency "$2" --requests "${3:-$REQUESTS}" --warmup 16
}
results="$work/results.jsonl"
record() { # name concurrency url [setting]
  echo "{\"server\": \"$1\", \"setting\": \"${4:-}\", \"round\": $round, \"result\": $(run_load "$3" "$2")}" >>"$results"
}
# Each server is started in this shell (not a subshell) so that it can be stopped; PORT is its port.
serve_ours() { # [flags]
  PORT=$(freeport)
  ORT_DYLIB_PATH="$OCELLUS_CACHE/lib/libonnxruntime.so" target/release/ocellus-predictor --log-level warn serve --model "$work/model.onnx" \
    --listen "127.0.0.1:$PORT" --queue-capacity 256 "$@" >"$work/ours.log" 2>&1 &
  pids+=($!); waitfor "http://127.0.0.1:$PORT/readyz"
}
serve_peer() { # mode workers [intra-op threads]; returns once every worker has started
  PORT=$(freeport)
  local log="$work/peer-$1.log"
  (eval "$peer_env"; MODE=$1 MODEL="$work/model.onnx" IMGSZ=$IMGSZ THREADS=${3:-} exec uvicorn --app-dir bench peer_server:app \
     --host 127.0.0.1 --port "$PORT" --workers "$2" --log-level info --no-access-log) >"$log" 2>&1 &
  pids+=($!); waitfor "http://127.0.0.1:$PORT/docs"
  for _ in $(seq 1 600); do [ "$(grep -c 'Application startup complete' "$log")" -ge "$2" ] && return 0; sleep 0.1; done
  die "not all $2 workers of peer $1 started"
}
stop_last() { local last=$((${#pids[@]} - 1)); kill "${pids[$last]}" 2>/dev/null || true; wait "${pids[$last]}" 2>/dev/null || true; unset "pids[$last]"; }
setting() { # mode workers threads: a row's label
  if [ "$1" = ort ]; then echo "$2 worker(s) x $3 thread(s)"; else echo "$2 worker(s)"; fi
}

# Same detections from all three before any timing: the benchmark's images, and non-square
# rescaled copies of some as JPEG and PNG (the square IMGSZ images never exercise the resize).
[ -d "$work/agree" ] || (eval "$peer_env"; python bench/agreement.py variants "$work/images" "$work/agree")
log "checking that all three servers return the same detections"
serve_ours; u_ours="http://127.0.0.1:$PORT/predict"
serve_peer ort 1; u_ort="http://127.0.0.1:$PORT/predict"
serve_peer ultralytics 1; u_ult="http://127.0.0.1:$PORT/predict"
python3 bench/agreement.py check --server "ocellus=$u_ours" --server "onnxruntime=$u_ort" --server "ultralytics=$u_ult" \
  "$work/images" "$work/agree" | tee "$work/agreement.txt" || die "the servers disagree (above): nothing is timed"
stop_last; stop_last; stop_last

# Peers at their best: for each uvicorn worker count (1, 2, 4, ... MAX_WORKERS; (b) with
# cores / workers intra-op threads each), throughput at each concurrency; the rounds then run each
# peer at its best setting for that concurrency.
sweep="$work/sweep.jsonl"; rm -f "$sweep"
for mode in ort ultralytics; do
  for w in $( (w=1; while [ $w -lt "$MAX_WORKERS" ]; do echo $w; w=$((w * 2)); done; echo "$MAX_WORKERS") | sort -nu); do
    t=$((CORES / w > 0 ? CORES / w : 1))
    log "sweep: peer $mode, $(setting $mode $w $t)"; serve_peer $mode $w $t
    for c in 1 16; do
      echo "{\"mode\": \"$mode\", \"workers\": $w, \"threads\": $t, \"result\": $(run_load "http://127.0.0.1:$PORT/predict" $c "$SWEEP_REQUESTS")}" >>"$sweep"
    done
    stop_last
  done
done
# "mode concurrency workers threads" of the best setting per mode and concurrency.
best=$(python3 - "$sweep" <<'PY'
import json, sys
best = {}
for r in map(json.loads, open(sys.argv[1])):
    k = (r["mode"], r["result"]["concurrency"])
    if r["result"]["errors"] == 0 and (k not in best or r["result"]["images_per_second"] > best[k]["result"]["images_per_second"]):
        best[k] = r
for (mode, c), r in best.items():
    print(mode, c, r["workers"], r["threads"])
PY
)
[ "$(echo "$best" | wc -l)" = 4 ] || die "the sweep found no error-free setting for every peer and concurrency"
run_peer() { # mode name: each concurrency at its best setting (one start per distinct setting)
  local mode=$1 name=$2
  for cfg in $(echo "$best" | awk -v m="$mode" '$1 == m {print $3 ":" $4}' | sort -u); do
    local w=${cfg%:*} t=${cfg#*:}
    serve_peer "$mode" "$w" "$t"
    for c in $(echo "$best" | awk -v m="$mode" -v s="$w $t" '$1 == m && $3 " " $4 == s {print $2}'); do
      record "$name" "$c" "http://127.0.0.1:$PORT/predict" "$(setting "$mode" "$w" "$t")"
    done
    stop_last
  done
}

# The servers take turns, ROUNDS times; each row is the median over the rounds (this machine's
# speed drifts by 10-20% over minutes, which would otherwise favour whoever ran at a good time).
OURS="ocellus-predictor"; ONE="ocellus-predictor, --instances 1"; ORT="onnxruntime Python + FastAPI"; ULT="Ultralytics YOLO(onnx).predict + FastAPI"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: ours (default: elastic CPU lanes)"; serve_ours
  for c in 1 16; do record "$OURS" $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  log "round $round/$ROUNDS: ours, one model copy (max batch 8, then 1)"; serve_ours --instances 1 --max-batch 8 --max-delay-ms 2
  for c in 1 16; do record "$ONE, max batch 8" $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  serve_ours --instances 1 --max-batch 1; record "$ONE, max batch 1" 16 "http://127.0.0.1:$PORT/predict"; stop_last
  log "round $round/$ROUNDS: peer (b) onnxruntime + FastAPI"; run_peer ort "$ORT"
  log "round $round/$ROUNDS: peer (a) Ultralytics"; run_peer ultralytics "$ULT"
done

cat "$work/agreement.txt"
python3 - "$results" "$IMGSZ" "$REQUESTS" "$ROUNDS" "$sweep" "$SWEEP_REQUESTS" "$ours_ort" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nONNX Runtime {sys.argv[7]} in all three servers. Peer settings tried ({sys.argv[6]} requests each; images/s):\n")
print("| peer | setting | concurrency 1 | concurrency 16 |")
print("| --- | --- | ---: | ---: |")
tried = {}
for r in map(json.loads, open(sys.argv[5])):
    label = f"{r['workers']} worker(s) x {r['threads']} thread(s)" if r["mode"] == "ort" else f"{r['workers']} worker(s)"
    tried.setdefault((r["mode"], label), {})[r["result"]["concurrency"]] = r["result"]
for (mode, label), by_c in tried.items():
    cell = lambda c: f"{by_c[c]['images_per_second']:.1f}" + (f" ({by_c[c]['errors']} errors)" if by_c[c]["errors"] else "") if c in by_c else ""
    print(f"| {'(b) onnxruntime' if mode == 'ort' else '(a) Ultralytics'} | {label} | {cell(1)} | {cell(16)} |")
print()
runs, settings = {}, {}
for r in rows:
    k = (r["server"], r["result"]["concurrency"])
    runs.setdefault(k, []).append(r["result"])
    settings[k] = r.get("setting") or ""
med = lambda xs, k: statistics.median(x[k] for x in xs)
print(f"| server ({sys.argv[3]} JPEG requests, {sys.argv[2]}x{sys.argv[2]}, CPU, median of {sys.argv[4]} rounds) | concurrency | images/s | p50 ms | p99 ms | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for (name, c), xs in runs.items():
    label = f"{name} ({settings[(name, c)]})" if settings[(name, c)] else name
    print(f"| {label} | {c} | {med(xs, 'images_per_second'):.1f} | {med(xs, 'p50_ms'):.1f} | {med(xs, 'p99_ms'):.1f} | {sum(x['errors'] for x in xs)} |")
ips = {k: med(xs, "images_per_second") for k, xs in runs.items()}
print()
OURS, ONE = "ocellus-predictor", "ocellus-predictor, --instances 1"
ORT, ULT = "onnxruntime Python + FastAPI", "Ultralytics YOLO(onnx).predict + FastAPI"
for c in (1, 16):
    print(f"- concurrency {c}: {ips[(OURS, c)] / ips[(ULT, c)]:.2f}x (a) Ultralytics, {ips[(OURS, c)] / ips[(ORT, c)]:.2f}x (b) onnxruntime + FastAPI")
print(f"- batching gain of one model copy at concurrency 16: {ips[(ONE + ', max batch 8', 16)] / ips[(ONE + ', max batch 1', 16)]:.2f}x (max batch 8 vs 1)")
print(f"- elastic lanes vs one copy (max batch 8): {ips[(OURS, 1)] / ips[(ONE + ', max batch 8', 1)]:.2f}x at concurrency 1, {ips[(OURS, 16)] / ips[(ONE + ', max batch 8', 16)]:.2f}x at 16")
PY

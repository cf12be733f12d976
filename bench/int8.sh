#!/usr/bin/env bash
# INT8 export benchmark (issue 18): ocellus-predictor serving `ocellus-trainer export --int8`
# against (a) Ultralytics YOLO(fp32.onnx).predict, (b) onnxruntime Python on the same FP32 ONNX,
# both behind FastAPI/uvicorn (bench/peer_server.py), and (c) Ultralytics' own OpenVINO INT8
# export (format="openvino", int8=True, calibrated on the same images) through Ultralytics
# predict, behind the same FastAPI server. One set of weights for every side; each model's
# mAP50-95 from one evaluator (Ultralytics `val`) on the same validation images the servers get.
#   IMGSZ=640 REQUESTS=100 ROUNDS=2 bench/int8.sh      # REUSE=1 keeps the previous run's models
#   IMGSZ=320 REQUESTS=100 ROUNDS=2 bench/int8.sh
# Steps: the bring-your-own-model fixture's yolov8n (hack/setup.sh ultralytics) fine-tuned by
# Ultralytics for EPOCHS at IMGSZ on TRAIN_IMAGES synthetic shapes images made at IMGSZ
# (model.pt); `ocellus-trainer import` of it, then `export --int8` calibrated on the first CALIB
# training images and gated on the 64 validation images; Ultralytics' FP32 ONNX and OpenVINO INT8
# exports of the same model.pt (the OpenVINO one calibrated on the same CALIB images). Each peer is
# swept over 1, 2, ... MAX_WORKERS uvicorn workers ((b) with cores / workers intra-op threads) at
# SWEEP_REQUESTS and timed at its best per concurrency; the servers take turns ROUNDS times and
# each row is the median.
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
IMGSZ=${IMGSZ:-640}; REQUESTS=${REQUESTS:-100}; ROUNDS=${ROUNDS:-2}; TRAIN_IMAGES=${TRAIN_IMAGES:-200}; CALIB=${CALIB:-128}
[ "$IMGSZ" -ge 640 ] && EPOCHS=${EPOCHS:-3} || EPOCHS=${EPOCHS:-6}
SWEEP_REQUESTS=${SWEEP_REQUESTS:-$REQUESTS}; CORES=$(nproc); MAX_WORKERS=${MAX_WORKERS:-$CORES}
hack/setup.sh python
hack/setup.sh ultralytics
source <(hack/setup.sh torch-env)
cargo build -q --release -p ocellus-trainer --features torch -p ocellus-predictor -p ocellus-tests --bins
peer_env=$(bench/setup-peer.sh)
peer() { (eval "$peer_env"; python bench/int8_peer.py "$@"); }

# One ONNX Runtime for ours and the ONNX peers, as in bench/predict.sh.
ours_ort=$(readlink -f "$OCELLUS_CACHE/lib/libonnxruntime.so"); ours_ort=${ours_ort##*.so.}
versions=$(peer versions)
peer_ort=$(echo "$versions" | python3 -c 'import json, sys; print(json.load(sys.stdin)["onnxruntime"])')
[ "$ours_ort" = "$peer_ort" ] \
  || die "ONNX Runtime $ours_ort (predictor) differs from $peer_ort (peers); rm -rf $OCELLUS_CACHE/bench-venv to reinstall"
log "versions: ONNX Runtime $ours_ort (predictor), peers $versions"

work="$OCELLUS_CACHE/bench-int8-$IMGSZ"
[ "${REUSE:-0}" = 1 ] && [ -f "$work/models.done" ] || { rm -rf "$work"; mkdir -p "$work"; }
rm -f "$work/results.jsonl" "$work/sweep.jsonl"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null
  if [ "$rc" != 0 ]; then for f in "$work"/*.log; do echo "== $f"; tail -20 "$f"; done >&2; fi
}
trap cleanup EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitfor() { for _ in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; die "$1 did not come up"; }
names=$'names:\n  0: circle\n  1: square\n  2: triangle'
# A YOLO-layout folder DIR/images/val + DIR/labels/val of the given images (and their labels),
# with a data.yaml that both Ultralytics and `ocellus-trainer ingest` read.
yolo_dir() { # dir images...
  local dir=$1; shift
  mkdir -p "$dir/images/val" "$dir/labels/val"
  for img in "$@"; do
    cp "$img" "$dir/images/val/"
    local lbl=${img/\/images\//\/labels\/}; cp "${lbl%.jpg}.txt" "$dir/labels/val/"
  done
  printf 'path: %s\ntrain: images/val\nval: images/val\n%s\n' "$dir" "$names" >"$dir/data.yaml"
}

if [ ! -f "$work/models.done" ]; then
  # Images made at IMGSZ: TRAIN_IMAGES to fine-tune on (the first CALIB of its train split also
  # calibrate both INT8 exports), 64 others (seed 99) to validate on and to serve.
  target/release/ocellus-fixtures --images "$TRAIN_IMAGES" --size "$IMGSZ" --out "$work/ds" >/dev/null
  printf 'path: %s\ntrain: images/train\nval: images/val\n%s\n' "$work/ds" "$names" >"$work/ds/data.yaml"
  target/release/ocellus-fixtures --images 64 --size "$IMGSZ" --seed 99 --out "$work/test" >/dev/null
  yolo_dir "$work/val" "$work"/test/images/*/*.jpg
  mapfile -t calib < <(ls "$work"/ds/images/train/*.jpg | sort | head -n "$CALIB")
  yolo_dir "$work/calib" "${calib[@]}"

  log "fine-tuning the fixture's yolov8n with Ultralytics ($EPOCHS epochs at $IMGSZ on $TRAIN_IMAGES images)"
  start=$(date +%s)
  peer finetune "$OCELLUS_CACHE/ultralytics-fixture/best.pt" "$work/ds/data.yaml" "$EPOCHS" "$IMGSZ" "$work/ft" "$work/model.pt" >"$work/finetune.log" 2>&1 \
    || die "fine-tuning failed ($work/finetune.log)"
  log "fine-tuned in $(($(date +%s) - start)) s"

  log "Ultralytics exports: FP32 ONNX (dynamic) and OpenVINO INT8 (calibrated on the $CALIB images)"
  mkdir -p "$work/u" && cp "$work/model.pt" "$work/u/model.pt"
  peer export-onnx "$work/u/model.pt" "$IMGSZ" "$work/fp32.onnx" >"$work/export-onnx.log" 2>&1 || die "ONNX export failed ($work/export-onnx.log)"
  start=$(date +%s)
  peer export-openvino "$work/u/model.pt" "$IMGSZ" "$work/calib/data.yaml" "$work/int8_openvino_model" >"$work/export-openvino.log" 2>&1 \
    || die "OpenVINO INT8 export failed ($work/export-openvino.log)"
  log "OpenVINO INT8 export took $(($(date +%s) - start)) s"

  log "ours: import model.pt, export --int8 (calibrated on the same $CALIB images, gated on the 64 validation images)"
  port=$(freeport)
  "$OCELLUS_CACHE/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/bench', method='PUT'))"
  export OCELLUS_S3_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench OCELLUS_S3_BUCKET=bench
  for d in calib val; do
    target/release/ocellus-trainer ingest --source "$work/$d" --prefix "b/datasets/$d" --name "$d" --task detect --work-dir "$work/i-$d" >/dev/null \
      || die "ingest of $d failed"
  done
  target/release/ocellus-trainer import --from "$work/model.pt" --output "$work/ours/model.safetensors" --imgsz "$IMGSZ" \
    --work-dir "$work/im" >"$work/import.log" 2>&1 || die "import failed ($work/import.log)"
  start=$(date +%s)
  ORT_DYLIB_PATH="$OCELLUS_CACHE/lib/libonnxruntime.so" target/release/ocellus-trainer export --weights "$work/ours/model.safetensors" \
    --format onnx --int8 --calibration s3://bench/b/datasets/calib/manifest.ndjson --calibration-images "$CALIB" \
    --gate-manifest s3://bench/b/datasets/val/manifest.ndjson --gate-split val --imgsz "$IMGSZ" --dynamic \
    --output "$work/int8.onnx" --work-dir "$work/e" >"$work/export-int8.log" 2>&1 || die "INT8 export failed ($work/export-int8.log)"
  log "our INT8 export took $(($(date +%s) - start)) s"
  kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null; pids=()

  # One evaluator for every model: Ultralytics' val on the 64 validation images.
  log "mAP50-95 of every model (Ultralytics val, the 64 validation images)"
  rm -f "$work/map.jsonl"
  for m in pt:model.pt fp32:fp32.onnx ours-int8:int8.onnx openvino-int8:int8_openvino_model; do
    echo "{\"model\": \"${m%%:*}\", \"val\": $(peer val "$work/${m#*:}" "$work/val/data.yaml" "$IMGSZ" "$work/v" 2>>"$work/val.log" | tail -1)}" >>"$work/map.jsonl" \
      || die "val of ${m#*:} failed ($work/val.log)"
  done
  touch "$work/models.done"
fi
mkdir -p "$work/images" && cp "$work"/val/images/val/*.jpg "$work/images/"

run_load() { # url concurrency [requests]
  target/release/ocellus-loadgen --url "$1" --images "$work/images" --concurrency "$2" --requests "${3:-$REQUESTS}" --warmup 16
}
results="$work/results.jsonl"
record() { # name concurrency url [setting]
  echo "{\"server\": \"$1\", \"setting\": \"${4:-}\", \"round\": $round, \"result\": $(run_load "$3" "$2")}" >>"$results"
}
serve_ours() { # model [flags]
  PORT=$(freeport)
  local model=$1; shift
  ORT_DYLIB_PATH="$OCELLUS_CACHE/lib/libonnxruntime.so" target/release/ocellus-predictor --log-level warn serve --model "$model" \
    --listen "127.0.0.1:$PORT" --queue-capacity 256 "$@" >"$work/ours.log" 2>&1 &
  pids+=($!); waitfor "http://127.0.0.1:$PORT/readyz"
}
# Peers: "ort" (b) and "ultralytics" (a) on the FP32 ONNX, "openvino" (c): Ultralytics on its OpenVINO INT8 export.
peer_mode() { case $1 in ort) echo ort ;; *) echo ultralytics ;; esac; }
peer_model() { case $1 in openvino) echo "$work/int8_openvino_model" ;; *) echo "$work/fp32.onnx" ;; esac; }
serve_peer() { # peer workers [intra-op threads]; returns once every worker has started
  PORT=$(freeport)
  local log="$work/peer-$1.log"
  (eval "$peer_env"; MODE=$(peer_mode "$1") MODEL=$(peer_model "$1") IMGSZ=$IMGSZ THREADS=${3:-} exec uvicorn --app-dir bench peer_server:app \
     --host 127.0.0.1 --port "$PORT" --workers "$2" --log-level info --no-access-log) >"$log" 2>&1 &
  pids+=($!); waitfor "http://127.0.0.1:$PORT/docs"
  for _ in $(seq 1 600); do [ "$(grep -c 'Application startup complete' "$log")" -ge "$2" ] && return 0; sleep 0.1; done
  die "not all $2 workers of peer $1 started"
}
stop_last() { local last=$((${#pids[@]} - 1)); kill "${pids[$last]}" 2>/dev/null || true; wait "${pids[$last]}" 2>/dev/null || true; unset "pids[$last]"; }
setting() { # peer workers threads: a row's label
  if [ "$1" = ort ]; then echo "$2 worker(s) x $3 thread(s)"; else echo "$2 worker(s)"; fi
}

# Nobody is fast by finding nothing: every server's detections on the served images, and how many
# of them (a) also finds (INT8 moves boxes and confidences, so this is a summary, not a gate).
log "detections of every server on the 64 images"
serve_ours "$work/int8.onnx"; u1="http://127.0.0.1:$PORT/predict"
serve_ours "$work/fp32.onnx"; u2="http://127.0.0.1:$PORT/predict"
serve_peer ort 1; u3="http://127.0.0.1:$PORT/predict"
serve_peer ultralytics 1; u4="http://127.0.0.1:$PORT/predict"
serve_peer openvino 1; u5="http://127.0.0.1:$PORT/predict"
peer detections "$work/images" a "ours-int8=$u1" "ours-fp32=$u2" "b=$u3" "a=$u4" "c=$u5" | tee "$work/detections.txt" \
  || die "a server found nothing (above): nothing is timed"
stop_last; stop_last; stop_last; stop_last; stop_last

# Peers at their best, per concurrency (as bench/predict.sh).
sweep="$work/sweep.jsonl"
for p in ort ultralytics openvino; do
  for w in $( (w=1; while [ $w -lt "$MAX_WORKERS" ]; do echo $w; w=$((w * 2)); done; echo "$MAX_WORKERS") | sort -nu); do
    t=$((CORES / w > 0 ? CORES / w : 1))
    log "sweep: peer $p, $(setting $p $w $t)"; serve_peer $p $w $t
    for c in 1 16; do
      echo "{\"mode\": \"$p\", \"workers\": $w, \"threads\": $t, \"result\": $(run_load "http://127.0.0.1:$PORT/predict" $c "$SWEEP_REQUESTS")}" >>"$sweep"
    done
    stop_last
  done
done
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
[ "$(echo "$best" | wc -l)" = 6 ] || die "the sweep found no error-free setting for every peer and concurrency"
run_peer() { # peer name: each concurrency at its best setting
  local p=$1 name=$2
  for cfg in $(echo "$best" | awk -v m="$p" '$1 == m {print $3 ":" $4}' | sort -u); do
    local w=${cfg%:*} t=${cfg#*:}
    serve_peer "$p" "$w" "$t"
    for c in $(echo "$best" | awk -v m="$p" -v s="$w $t" '$1 == m && $3 " " $4 == s {print $2}'); do
      record "$name" "$c" "http://127.0.0.1:$PORT/predict" "$(setting "$p" "$w" "$t")"
    done
    stop_last
  done
}

for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: ours on our INT8 export"; serve_ours "$work/int8.onnx"
  for c in 1 16; do record ours-int8 $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  log "round $round/$ROUNDS: ours on the FP32 ONNX"; serve_ours "$work/fp32.onnx"
  for c in 1 16; do record ours-fp32 $c "http://127.0.0.1:$PORT/predict"; done; stop_last
  log "round $round/$ROUNDS: peer (a) Ultralytics on the FP32 ONNX"; run_peer ultralytics a
  log "round $round/$ROUNDS: peer (b) onnxruntime + FastAPI on the FP32 ONNX"; run_peer ort b
  log "round $round/$ROUNDS: peer (c) Ultralytics on its OpenVINO INT8 export"; run_peer openvino c
done

cat "$work/detections.txt"
python3 - "$work" "$IMGSZ" "$REQUESTS" "$ROUNDS" "$SWEEP_REQUESTS" "$ours_ort" "$versions" "$CALIB" "$EPOCHS" "$TRAIN_IMAGES" <<'PY'
import json, statistics, sys
work, imgsz, requests, rounds, sweep_requests, ours_ort, versions, calib, epochs, train_images = sys.argv[1:]
v = json.loads(versions)
sidecar = json.load(open(f"{work}/int8.onnx.json")).get("quantization", {})
maps = {r["model"]: r["val"] for r in map(json.loads, open(f"{work}/map.jsonl"))}
print(f"\nModel: the fixture's yolov8n fine-tuned by Ultralytics {v['ultralytics']} ({epochs} epochs at {imgsz} on {train_images} images); "
      f"INT8 calibration: the same {calib} images for ours and OpenVINO. ONNX Runtime {ours_ort} (ours, (a), (b)); "
      f"OpenVINO {v['openvino']}, NNCF {v['nncf']} ((c)); torch {v['torch']}.")
print(f"Our export's sidecar (its own evaluator, ONNX Runtime): fp32Map {sidecar.get('fp32Map')}, int8Map {sidecar.get('int8Map')}; "
      f"Ultralytics val of model.pt (PyTorch): mAP50-95 {maps['pt']['map50_95']:.4f}")
print(f"\nPeer settings tried ({sweep_requests} requests each; images/s):\n")
print("| peer | setting | concurrency 1 | concurrency 16 |")
print("| --- | --- | ---: | ---: |")
label = {"ultralytics": "(a) Ultralytics, FP32 ONNX", "ort": "(b) onnxruntime, FP32 ONNX", "openvino": "(c) Ultralytics, OpenVINO INT8"}
tried = {}
for r in map(json.loads, open(f"{work}/sweep.jsonl")):
    s = f"{r['workers']} worker(s) x {r['threads']} thread(s)" if r["mode"] == "ort" else f"{r['workers']} worker(s)"
    tried.setdefault((r["mode"], s), {})[r["result"]["concurrency"]] = r["result"]
for (mode, s), by_c in tried.items():
    cell = lambda c: f"{by_c[c]['images_per_second']:.1f}" + (f" ({by_c[c]['errors']} errors)" if by_c[c]["errors"] else "") if c in by_c else ""
    print(f"| {label[mode]} | {s} | {cell(1)} | {cell(16)} |")
runs, settings = {}, {}
for r in map(json.loads, open(f"{work}/results.jsonl")):
    k = (r["server"], r["result"]["concurrency"])
    runs.setdefault(k, []).append(r["result"])
    settings[k] = r.get("setting") or ""
med = lambda xs, k: statistics.median(x[k] for x in xs)
names = {
    "ours-int8": ("ocellus-predictor (default), our INT8 QDQ ONNX", "ours-int8"),
    "ours-fp32": ("ocellus-predictor (default), Ultralytics' FP32 ONNX (reference)", "fp32"),
    "a": ("(a) Ultralytics YOLO(fp32.onnx).predict + FastAPI", "fp32"),
    "b": ("(b) onnxruntime Python + FastAPI, FP32 ONNX", "fp32"),
    "c": ("(c) Ultralytics YOLO(openvino int8).predict + FastAPI", "openvino-int8"),
}
print(f"\n| server ({requests} JPEG requests, {imgsz}x{imgsz}, CPU, median of {rounds} rounds) | concurrency | images/s | p50 ms | p99 ms | errors | mAP50-95 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for key in names:
    for c in (1, 16):
        xs = runs[(key, c)]
        name = names[key][0] + (f" ({settings[(key, c)]})" if settings[(key, c)] else "")
        print(f"| {name} | {c} | {med(xs, 'images_per_second'):.1f} | {med(xs, 'p50_ms'):.1f} | {med(xs, 'p99_ms'):.1f} | "
              f"{sum(x['errors'] for x in xs)} | {maps[names[key][1]]['map50_95']:.4f} |")
ips = {k: med(xs, "images_per_second") for k, xs in runs.items()}
m = lambda key: maps[names[key][1]]["map50_95"]
print()
for c in (1, 16):
    r = {p: ips[("ours-int8", c)] / ips[(p, c)] for p in "abc"}
    goal = {"a": 2.0, "b": 1.5, "c": 1.0}
    verdict = lambda p: f"{r[p]:.2f}x ({p}) (goal {goal[p]}x: {'met' if r[p] >= goal[p] else 'NOT met'}; mAP50-95 {m('ours-int8'):.4f} vs {m(p):.4f}: {'equal or better' if m('ours-int8') >= m(p) else 'LOWER'})"
    print(f"- concurrency {c}: " + ", ".join(verdict(p) for p in "abc") + f"; INT8 vs FP32 in our predictor: {ips[('ours-int8', c)] / ips[('ours-fp32', c)]:.2f}x")
PY

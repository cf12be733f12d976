#!/usr/bin/env bash
# Trainer benchmark: `ocellus-trainer train` (release, CPU) against Ultralytics training
# yolov8n.yaml from scratch, same synthetic dataset, epochs, imgsz, batch, seed and workers, in the
# same run. Both are measured alike:
#  - each training is one process, timed by its whole-process wall clock;
#  - both final (last-epoch EMA) weights are exported to ONNX (batch 1, imgsz) by their own tool;
#  - both ONNX models are scored by one evaluator, bench/score_coco.py (one preprocessing, one
#    NMS, pycocotools), with conf 0.001, IoU 0.7 and max_det 300 on the same validation images;
#    the same predictions are also scored by Ultralytics' own matching and AP;
#  - the per-epoch curves (each trainer's own validation) are printed side by side.
#   N=300 EPOCHS=10 IMGSZ=160 BATCH=16 bench/train.sh      (KEEP=1 keeps the work directory;
#   SAME_INIT=1 starts ours from the peer's initial weights)
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
N=${N:-300}; EPOCHS=${EPOCHS:-10}; IMGSZ=${IMGSZ:-160}; BATCH=${BATCH:-16}; SEED=0; WORKERS=2
# SAME_INIT is on only when 1 (the ${SAME_INIT:+...} expansions below test for non-empty).
[ "${SAME_INIT:-0}" = 1 ] || SAME_INIT=
CONF=0.001; IOU=0.7; MAX_DET=300
hack/setup.sh python
source <(hack/setup.sh torch-env)
cargo build -q --release -p ocellus-trainer --features torch -p ocellus-predictor -p ocellus-tests --bins
target="${CARGO_TARGET_DIR:-target}/release"
peer_env=$(bench/setup-peer.sh)
# The common evaluator runs in the peer's venv (OpenCV, onnxruntime) and needs pycocotools.
(eval "$peer_env"; python -c 'import pycocotools' 2>/dev/null || pip install -q pycocotools) || die "pycocotools"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$OCELLUS_CACHE/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
if [ -n "${KEEP:-}" ]; then trap 'kill $moto 2>/dev/null; log "kept $work"' EXIT; else trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT; fi
"$target/ocellus-fixtures" --images "$N" --size "$IMGSZ" --out "$work/ds" >/dev/null
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/bench', method='PUT'))"
export OCELLUS_S3_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench OCELLUS_S3_BUCKET=bench
"$target/ocellus-trainer" ingest --source "$work/ds" --prefix b/datasets/shapes --name shapes --task detect --work-dir "$work/i" >/dev/null

# Runs "$@" as one process and writes to the file $1 its whole-process wall clock and CPU time
# (user + system, seconds) and the 1-minute load average before and after, as JSON: the machine
# may be shared, and a busy core slows libtorch's threads on both sides.
timed() {
  local out=$1; shift
  python3 -c '
import json, os, resource, subprocess, sys, time
load = lambda: os.getloadavg()[0]
l0, t0 = load(), time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall, ru = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "load": [l0, load()]}, open(sys.argv[1], "w"))
sys.exit(rc)' "$out" "$@"
}

# The peer runs with `optimizer=auto`; ours gets what the operator passes for `optimizer: auto`
# (operator/src/controller/training_job.rs, `auto_optimizer`): for a run this short, AdamW with
# lr0 = 0.002 * 5 / (4 + classes), beta1 0.9, and the biases' warm-up starting at 0.
nc=$(python3 -c 'import sys; t=open(sys.argv[1]).read().split("names:",1)[1]; print(sum(1 for l in t.splitlines() if l.strip()))' "$work/ds/data.yaml")
lr0=$(python3 -c "print(round(0.002 * 5 / (4 + $nc), 6))")
# SAME_INIT=1: the peer runs first and writes its initial weights (bench/ultralytics_train.py,
# OCELLUS_DUMP_INIT), and ours starts from them (--start-weights): the two then differ only in
# the training itself (data pipeline, optimiser), not in the draw of the initial weights.
peer() {
  log "peer: Ultralytics YOLO('yolov8n.yaml').train"
  (eval "$peer_env"; OCELLUS_DUMP_INIT=${SAME_INIT:+$work/peer-init.safetensors} timed "$work/peer.time.json" \
    python bench/ultralytics_train.py train "$work/ds/data.yaml" "$EPOCHS" "$IMGSZ" "$BATCH" "$work/peer" \
    >"$work/peer.out" 2>"$work/peer.log")
}
if [ -n "${SAME_INIT:-}" ]; then peer; fi
log "ours: ocellus-trainer train (AdamW, lr0 $lr0 for $nc classes, as optimizer=auto${SAME_INIT:+, from the initial weights of the peer})"
timed "$work/ours.time.json" "$target/ocellus-trainer" train --manifest s3://bench/b/datasets/shapes/manifest.ndjson \
  --output-prefix b/trainingjobs/t --epochs "$EPOCHS" --imgsz "$IMGSZ" --batch "$BATCH" --seed "$SEED" \
  --optimizer AdamW --lr0 "$lr0" --momentum 0.9 --warmup-bias-lr 0 \
  ${SAME_INIT:+--start-weights "$work/peer-init.safetensors"} \
  --workers "$WORKERS" --device cpu --work-dir "$work/t" >"$work/ours.jsonl"
if [ -z "${SAME_INIT:-}" ]; then peer; fi
# From the peer's weights, every variable must have been taken (none left at our initialisation).
if [ -n "${SAME_INIT:-}" ]; then
  python3 - "$work/ours.jsonl" <<'PY' || die "ours did not start from all of the peer's initial weights"
import json, sys
start = next(json.loads(l) for l in open(sys.argv[1]) if '"fine-tune"' in l)
sys.exit(1 if start.get("reinitialized") or not start.get("loaded") else 0)
PY
fi

log "export both last-epoch weights to ONNX"
"$target/ocellus-trainer" export --weights s3://bench/b/trainingjobs/t/weights/last.safetensors --format onnx \
  --imgsz "$IMGSZ" --output "$work/ours.onnx" --device cpu --work-dir "$work/e" >/dev/null
lastjson() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$@"; }
peer_last=$(lastjson "$work/peer.out" last)
cp "$peer_last" "$work/peer.pt"
(eval "$peer_env"; python bench/ultralytics_train.py export "$work/peer.pt" "$IMGSZ" >/dev/null 2>>"$work/peer.log")

log "score both ONNX models with bench/score_coco.py"
for side in ours peer; do
  (eval "$peer_env"; python bench/score_coco.py "$work/$side.onnx" "$work/ds" --imgsz "$IMGSZ" --conf $CONF --iou $IOU \
    --max-det $MAX_DET --ultralytics-ap >"$work/$side.score.json")
done

# The evaluation gap, on a held-out set the training never saw, stretched to HELD_W x HELD_H so that
# letterboxing pads and rescales (the square synthetic images never do): our `val` and pycocotools on
# the very same predictions (must agree: the evaluator is ours, the reference theirs); Ultralytics'
# validator reimplemented choice by choice (bench/score_coco.py --attribution) and run for real
# (`YOLO(model.onnx).val()`), on our static ONNX; rectangular batches on the peer's dynamic ONNX
# (ours has a fixed input size; rect batches are the validator's choice, not the weights').
HELD_N=${HELD_N:-100}; HELD_W=${HELD_W:-240}; HELD_H=${HELD_H:-160}
log "held-out evaluation: $HELD_N unseen images at ${HELD_W}x${HELD_H}"
"$target/ocellus-fixtures" --images "$HELD_N" --size "$IMGSZ" --seed 7 --out "$work/fresh" >/dev/null
(eval "$peer_env"; python bench/heldout.py "$work/fresh" "$work/heldout" "$HELD_W" "$HELD_H" >/dev/null)
"$target/ocellus-trainer" ingest --source "$work/heldout" --prefix b/datasets/heldout --name heldout --task detect \
  --work-dir "$work/hi" >/dev/null
"$target/ocellus-trainer" val --weights s3://bench/b/trainingjobs/t/weights/last.safetensors \
  --manifest s3://bench/b/datasets/heldout/manifest.ndjson --imgsz "$IMGSZ" --conf $CONF --iou $IOU --max-det $MAX_DET \
  --predictions "$work/ours.heldout.json" --device cpu --work-dir "$work/v" | tail -1 >"$work/ours.val.json"
(eval "$peer_env"
 python bench/score_coco.py - "$work/heldout" --imgsz "$IMGSZ" --predictions "$work/ours.heldout.json" \
   --max-det $MAX_DET >"$work/ours.val.coco.json"
 python bench/score_coco.py "$work/ours.onnx" "$work/heldout" --imgsz "$IMGSZ" --conf $CONF --iou $IOU \
   --max-det $MAX_DET --attribution >"$work/ours.attribution.json"
 python bench/ultralytics_train.py val "$work/ours.onnx" "$work/heldout/data.yaml" "$IMGSZ" "$work/uval" \
   >"$work/ours.uval.json" 2>>"$work/peer.log"
 cp "$work/peer.pt" "$work/peer_dynamic.pt"
 python bench/ultralytics_train.py export "$work/peer_dynamic.pt" "$IMGSZ" dynamic >"$work/peer.dyn.out" 2>>"$work/peer.log"
 python bench/score_coco.py "$(lastjson "$work/peer.dyn.out" onnx)" \
   "$work/heldout" --imgsz "$IMGSZ" --conf $CONF --iou $IOU --max-det $MAX_DET --batch "$BATCH" --rect --attribution \
   >"$work/peer.attribution.json")

python3 - "$work" "$N" "$EPOCHS" "$IMGSZ" "$BATCH" <<'PY'
import csv, json, os, sys
work, n, epochs, imgsz, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [json.loads(l) for l in open(f"{work}/ours.jsonl")]
assert lines[-1]["event"] == "done", lines[-1]
train_imgs = next(l for l in lines if l.get("phase") == "data")["train"]
ours_epochs = [l["metrics"] for l in lines if l["event"] == "epoch"]
peer_dir = json.loads(open(f"{work}/peer.out").read().splitlines()[-1])["save_dir"]
peer_epochs = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(f"{peer_dir}/results.csv"))]
timing = {s: json.load(open(f"{work}/{s}.time.json")) for s in ("ours", "peer")}
sec = {s: t["wall"] for s, t in timing.items()}
score = {s: json.load(open(f"{work}/{s}.score.json")) for s in ("ours", "peer")}
own = {"ours": ours_epochs[-1]["map50_95"], "peer": float(peer_epochs[-1]["metrics/mAP50-95(B)"])}
ips = {s: train_imgs * epochs / sec[s] for s in sec}
print(f"| {n} images ({train_imgs} train), {epochs} epochs, imgsz {imgsz}, batch {batch}, CPU ({os.cpu_count()} cores, "
      "shared) | process wall s | process CPU s | load avg start/end | train images/s | mAP50 | mAP50-95 "
      "| mAP50-95, Ultralytics AP | own last-epoch mAP50-95 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for s, name in (("peer", "Ultralytics yolov8n.yaml (peer)"), ("ours", "ocellus-trainer yolov8n")):
    c, t = score[s], timing[s]
    print(f"| {name} | {t['wall']:.0f} | {t['cpu']:.0f} | {t['load'][0]:.1f}/{t['load'][1]:.1f} | {ips[s]:.1f} "
          f"| {c['map50']:.3f} | {c['map50_95']:.3f} | {c['ultralytics']['map50_95']:.3f} | {own[s]:.3f} |")
print()
print(f"Throughput {ips['ours'] / ips['peer']:.2f}x the peer (wall), {timing['peer']['cpu'] / timing['ours']['cpu']:.2f}x "
      f"(CPU time); mAP50-95 (pycocotools, same evaluator) {score['ours']['map50_95']:.3f} vs "
      f"{score['peer']['map50_95']:.3f}")
print()
print("Per epoch, each trainer's own validation (ours: original pixels, pycocotools' AP; peer: Ultralytics' "
      "validator, letterboxed pixels, rectangular batches, its own AP):")
print()
print("| epoch | ours box | ours cls | ours dfl | ours mAP50 | ours mAP50-95 | peer box | peer cls | peer dfl | peer mAP50 "
      "| peer mAP50-95 |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for o, p in zip(ours_epochs, peer_epochs):
    f = lambda k: float(p[k])
    print(f"| {o['epoch']} | {o['box_loss']:.3f} | {o['cls_loss']:.3f} | {o['dfl_loss']:.3f} | {o['map50']:.3f} "
          f"| {o['map50_95']:.3f} | {f('train/box_loss'):.3f} | {f('train/cls_loss'):.3f} | {f('train/dfl_loss'):.3f} "
          f"| {f('metrics/mAP50(B)'):.3f} | {f('metrics/mAP50-95(B)'):.3f} |")

last = lambda f: json.loads(open(f"{work}/{f}").read().splitlines()[-1])
val, val_coco, uval = last("ours.val.json"), last("ours.val.coco.json"), last("ours.uval.json")
att, patt = last("ours.attribution.json"), last("peer.attribution.json")
print()
print(f"Held-out ({att['images']} unseen images, non-square), our last-epoch weights:")
print()
print("| evaluation | mAP50-95 |")
print("| --- | ---: |")
print(f"| `ocellus-trainer val` (ours: original pixels, clipped, best class per anchor, COCO AP) | {val['metrics']['map50_95']:.4f} |")
print(f"| pycocotools on the same predictions | {val_coco['map50_95']:.4f} |")
print(f"| bench/score_coco.py on our ONNX export (pycocotools) | {att['pycocotools']:.4f} |")
for k, v in att["delta"].items():
    print(f"| ... changing only `{k}` (Ultralytics' choice) | {v:+.4f} |")
print(f"| Ultralytics' validator, reimplemented (all its choices) | {att['ultralytics_validator']:.4f} |")
print(f"| Ultralytics' validator, `YOLO(ours.onnx).val()` | {uval['map50_95']:.4f} |")
print()
print(f"Rectangular batches (peer's dynamic ONNX): pycocotools {patt['pycocotools']:.4f}, rect {patt['delta']['rect']:+.4f}; "
      f"Ultralytics' validator square {patt['ultralytics_validator']:.4f}, rect {patt['ultralytics_validator_rect']:.4f}")
gap = abs(val["metrics"]["map50_95"] - val_coco["map50_95"])
assert gap < 1e-3, f"our evaluator and pycocotools disagree on the same predictions by {gap:.4f}"
PY

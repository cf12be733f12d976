#!/usr/bin/env bash
# Ingest benchmark: `ocellus-trainer ingest` against Ultralytics' dataset check/cache step on the
# same synthetic YOLO dataset, in the same run. Prints a Markdown table for docs/benchmarks.md.
#   N=10000 SIZE=64 bench/ingest.sh
source "$(dirname "$0")/../hack/lib.sh"
cd "$(dirname "$0")/.."
N=${N:-10000}
SIZE=${SIZE:-64}
hack/setup.sh python
eval "$(bench/setup-peer.sh)"
cargo build -q --release -p ocellus-trainer -p ocellus-tests --bins

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$OCELLUS_CACHE/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
log "writing $N images of ${SIZE}x${SIZE}"
target/release/ocellus-fixtures --images "$N" --size "$SIZE" --out "$work/ds" >/dev/null
cp -r "$work/ds" "$work/ds-peer"
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/bench', method='PUT'))"

log "ours: ocellus-trainer ingest (validate + store in S3)"
OCELLUS_S3_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench OCELLUS_S3_BUCKET=bench \
  /usr/bin/time -v target/release/ocellus-trainer ingest --source "$work/ds" --prefix bench/datasets/shapes --name shapes \
  --task detect --work-dir "$work/w" >"$work/ours.jsonl" 2>"$work/ours.time"
log "peer: Ultralytics check_det_dataset + YOLODataset label cache"
/usr/bin/time -v python bench/ultralytics_check.py "$work/ds-peer/data.yaml" >"$work/peer.json" 2>"$work/peer.time"

python3 - "$work" "$N" "$SIZE" <<'PY'
import json, re, sys
work, n, size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rss(path):
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read()).group(1)) / 1024
def wall(path):
    m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", open(path).read())
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi) * 60 + float(s)
ours = json.loads(open(f"{work}/ours.jsonl").read().strip().splitlines()[-1])
assert ours["event"] == "done", ours
peer = json.loads(open(f"{work}/peer.json").read().strip().splitlines()[-1])
assert ours["counts"]["images"] == n and peer["images"] == n, (ours["counts"], peer)
v, tot = ours["seconds"]["validate"], wall(f"{work}/ours.time")
print(f"| {n} images, {size}x{size} JPEG | images/s | peak RSS (MiB) |")
print("| --- | ---: | ---: |")
print(f"| Ultralytics check + label cache (peer, process wall time) | {n / wall(f'{work}/peer.time'):.0f} | {rss(f'{work}/peer.time'):.0f} |")
print(f"| Ultralytics check + label cache (peer, in-process) | {n / peer['seconds']:.0f} | |")
print(f"| ocellus ingest, validation phase (full decode + label checks) | {n / v:.0f} | |")
print(f"| ocellus ingest, end to end (validate + {n} PUTs to moto S3 + manifest) | {n / tot:.0f} | {rss(f'{work}/ours.time'):.0f} |")
print()
print(f"Ratios: validation phase vs peer in-process = {peer['seconds'] / v:.2f}x; "
      f"end to end vs peer process = {wall(f'{work}/peer.time') / tot:.2f}x")
PY

#!/usr/bin/env bash
# Installs the benchmark peer (Ultralytics + PyTorch CPU path + onnxruntime, and OpenVINO + NNCF) into
# ~/.cache/ocellus/bench-venv, configured to run offline.
source "$(dirname "$0")/../hack/lib.sh"
V="$OCELLUS_CACHE/bench-venv"
# Pinned: the parity fixtures in trainer-image/tests/data record these versions (parity.rs checks
# that they match); onnxruntime is the predictor tests' version, used by all servers in
# bench/predict.sh. .ready holds the pins installed, so changing them reinstalls.
PINS="torch==2.11.0 torchvision==0.26.0 ultralytics==8.4.190 onnxruntime==1.32.0"
if [ "$(cat "$V/.ready" 2>/dev/null)" != "$PINS" ]; then
  python3 -m venv "$V" || die "cannot create $V"
  "$V/bin/pip" install -q --upgrade pip
  log "installing $PINS (about 3 GB) into $V"
  # shellcheck disable=SC2086 # PINS is a list
  "$V/bin/pip" install -q $PINS onnx onnxslim fastapi uvicorn python-multipart \
    || die "pip install of the benchmark peer failed"
  echo "$PINS" > "$V/.ready"
fi
# Ultralytics' OpenVINO INT8 export (format="openvino", int8=True: NNCF post-training quantization)
# for bench/int8.sh's peer (c). Separate, so that adding it does not reinstall the rest.
OV_PINS="openvino==2026.4.1 nncf==3.4.0"
if [ "$(cat "$V/.ready-openvino" 2>/dev/null)" != "$OV_PINS" ]; then
  log "installing $OV_PINS into $V"
  # shellcheck disable=SC2086 # OV_PINS is a list
  "$V/bin/pip" install -q $OV_PINS || die "pip install of OpenVINO/NNCF failed"
  echo "$OV_PINS" > "$V/.ready-openvino"
fi
# Offline Ultralytics: no settings sync, no font download, no auto-install.
cfg="$OCELLUS_CACHE/bench-yolo-config"
mkdir -p "$cfg/Ultralytics"
[ -f "$cfg/Ultralytics/settings.json" ] || echo '{"sync": false, "hub": false, "wandb": false, "mlflow": false, "comet": false, "clearml": false, "dvc": false, "neptune": false, "raytune": false, "tensorboard": false}' > "$cfg/Ultralytics/settings.json"
font=$(find "$V" -name DejaVuSans.ttf | head -1)
[ -n "$font" ] && for f in Arial.ttf Arial.Unicode.ttf; do [ -f "$cfg/Ultralytics/$f" ] || cp "$font" "$cfg/Ultralytics/$f"; done
echo "export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 ORT_DISABLE_TELEMETRY=1 YOLO_CONFIG_DIR=$cfg MPLCONFIGDIR=$cfg/mpl PATH=$V/bin:\$PATH"

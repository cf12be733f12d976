#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with Rust: installs what the tests need
# (cached under ~/.cache/ocellus), checks the generated CRDs, then runs every test.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

log_disk
hack/setup.sh tools
hack/setup.sh cluster
hack/setup.sh python
hack/setup.sh torch
hack/setup.sh ultralytics

log "checking formatting (rustfmt.toml)"
cargo fmt --all --check

log "checking that the committed CRD YAML and reference pages are up to date"
cargo run -q --locked -p ocellus-crds --bin crdgen -- --check

# Layers point one way: workloads and pure libraries never link Kubernetes (tests included).
log "checking that workloads and libraries do not depend on Kubernetes"
for p in ocellus-core ocellus-storage ocellus-vision ocellus-interop ocellus-dataset ocellus-trainer ocellus-predictor; do
  if cargo tree --locked -q -p "$p" --all-features -e normal,dev,build --prefix none | grep -Eq '^(kube|kube-client|k8s-openapi) '; then
    die "$p depends on kube or k8s-openapi: $(cargo tree --locked -q -p "$p" --all-features -i k8s-openapi -e normal,dev,build | head -20)"
  fi
done

log "building (default members: no libtorch needed)"
cargo build --locked

log_disk
log "running the tests"
cargo test --locked --workspace --no-fail-fast

log "running the libtorch tests (trainer: models, training, export; predictor over HTTP; CPU)"
source <(hack/setup.sh torch-env)
# One invocation, so the `ocellus-trainer` binary the predictor tests run is the libtorch build.
cargo test --locked -p ocellus-trainer -p ocellus-predictor --features ocellus-trainer/torch,ocellus-predictor/torch --no-fail-fast

log "running the operator end to end and under failure (the local cluster, the libtorch trainer built above)"
# `-p ocellus-operator` alone does not rebuild the trainer: target/debug/ocellus-trainer stays the libtorch build.
cargo test --locked -p ocellus-operator --features e2e --test e2e --test resilience --no-fail-fast

log "running the demo (hack/demo.sh, the main job) in short: 3 epochs, then --exit"
cargo test --locked -p ocellus-tests --features demo --test demo --no-fail-fast

log_disk
# Lints last, so that a failing test is reported first. Clippy ships with rustup's default
# profile; a toolchain without it skips this step (it cannot be installed offline).
if cargo clippy --version >/dev/null 2>&1; then
  log "clippy (warnings are errors)"
  cargo clippy --locked --workspace --all-targets --features ocellus-trainer/torch,ocellus-predictor/torch,ocellus-operator/e2e,ocellus-tests/demo -- -D warnings
else
  log "clippy is not installed with this toolchain: lints skipped"
fi

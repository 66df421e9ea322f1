#!/usr/bin/env bash
# Issues a self-signed certificate for the wasmgress admission webhook and writes generated/,
# a kustomization over this overlay that carries it:
#
#   deploy/overlays/webhook-selfsigned/gen-cert.sh
#   kubectl apply -k deploy/overlays/webhook-selfsigned/generated
#
# What it makes:
#   - a CA (EC P-256) whose private key exists only in a temporary directory and is deleted on
#     exit: nobody can later mint another certificate the API server would trust for this
#     webhook. Its certificate becomes the webhook's caBundle.
#   - a serving certificate signed by it, with the names the API server dials
#     (<service>.<namespace>.svc and the shorter and longer forms), serverAuth only.
#   - generated/: tls.crt, tls.key (mode 600), ca.crt, and kustomization.yaml: the base plus
#     the Secret `wasmgress-webhook-tls` made from tls.crt and tls.key (in place of this
#     overlay's empty placeholder) and the caBundle on the ValidatingWebhookConfiguration.
#     generated/ is git-ignored; never commit it. (Using cert-manager or your own PKI instead?
#     The files in generated/ show what the Secret and caBundle must hold.)
#
# Run it again to rotate; each run replaces generated/. Needs bash and OpenSSL 1.1.1 or newer.
# DAYS (default 365) sets the validity.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/generated"
# The webhook Service of deploy/base: the API server dials <service>.<namespace>.svc.
namespace=wasmgress
service=wasmgress-webhook
days=${DAYS:-365}

command -v openssl >/dev/null || { echo "gen-cert.sh: openssl not found" >&2; exit 1; }

# Everything created from here on is readable by the owner only.
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# openssl chats on stderr even when it succeeds; show what it said only when it fails.
quiet() { "$@" 2>"$work/openssl.log" || { cat "$work/openssl.log" >&2; exit 1; }; }

quiet openssl req -x509 -new -nodes \
  -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$work/ca.key" -out "$work/ca.crt" -days "$days" \
  -subj "/CN=wasmgress-webhook-ca" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

quiet openssl req -new -nodes \
  -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$work/tls.key" -out "$work/tls.csr" \
  -subj "/CN=$service.$namespace.svc"

# The API server (Go's crypto/x509) checks only subjectAltName, never the CN.
cat >"$work/leaf.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$service,DNS:$service.$namespace,DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local
EXT

quiet openssl x509 -req -in "$work/tls.csr" \
  -CA "$work/ca.crt" -CAkey "$work/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -days "$days" -extfile "$work/leaf.ext" -out "$work/tls.crt"

# caBundle is base64 of the CA's PEM on one line (`openssl base64 -A` behaves the same on Linux
# and macOS, unlike `base64 -w0`).
ca_bundle=$(openssl base64 -A -in "$work/ca.crt")

rm -rf "$out"
mkdir -p "$out"
cp "$work/tls.crt" "$work/tls.key" "$work/ca.crt" "$out/"

# Built on the base, not on `..`: kustomize refuses a kustomization inside the directory of one
# it includes (a cycle), and the only thing `..` adds is the placeholder this replaces.
cat >"$out/kustomization.yaml" <<YAML
# Written by ../gen-cert.sh: the webhook's certificate and private key (tls.key beside this
# file). Do not edit, do not commit (git-ignored); run ../gen-cert.sh again to rotate.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../../../base

secretGenerator:
  - name: wasmgress-webhook-tls
    namespace: $namespace
    type: kubernetes.io/tls
    files:
      - tls.crt
      - tls.key
    options:
      # The webhook Deployment mounts the Secret by this exact name.
      disableNameSuffixHash: true
      labels:
        app.kubernetes.io/name: wasmgress
        app.kubernetes.io/component: webhook

patches:
  - patch: |-
      apiVersion: admissionregistration.k8s.io/v1
      kind: ValidatingWebhookConfiguration
      metadata:
        name: wasmgress
      webhooks:
        - name: validate.ingress.wasmgress.io
          clientConfig:
            caBundle: $ca_bundle
YAML

echo "wrote $out (private key inside: do not commit)"
echo "apply with: kubectl apply -k ${out#"$PWD/"}"

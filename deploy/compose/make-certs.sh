#!/bin/sh
# compose.yaml's one-shot `certs` service: a CA for the xDS port, the
# controller's certificate (DNS SAN = CONTROLLER_NAME, the name Envoy dials and
# checks) and Envoy's client certificate (DNS SAN = ENVOY_NODE_ID, the node id
# the controller requires of it; docs/xds-protocol.md rule 34). EC P-256, valid
# DAYS days. Certificates that exist are kept, so a restart changes nothing;
# `docker compose down -v` removes the volumes and a new CA is made next time.
#
#   CA_DIR          the CA's key and certificate (only this service mounts it)
#   CONTROLLER_DIR  controller.crt, controller.key, ca.pem (to check clients)
#   ENVOY_DIR       envoy.crt, envoy.key, ca.pem (to check the controller)
#   ENVOY_UID       the user Envoy runs as, who must read envoy.key
#
# tests/test_compose.py runs this script and checks what it makes.
set -eu

: "${CA_DIR:?}" "${CONTROLLER_DIR:?}" "${ENVOY_DIR:?}"
: "${CONTROLLER_NAME:=controller}" "${ENVOY_NODE_ID:=envoy}" "${ENVOY_UID:=101}" "${DAYS:=365}"

if [ -s "$CONTROLLER_DIR/controller.crt" ] && [ -s "$ENVOY_DIR/envoy.crt" ]; then
    echo "make-certs: certificates exist, kept"
    exit 0
fi
umask 077
mkdir -p "$CA_DIR" "$CONTROLLER_DIR" "$ENVOY_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
# shellcheck disable=SC2086  # $ec is several words on purpose
openssl req -x509 $ec -keyout "$CA_DIR/ca.key" -out "$CA_DIR/ca.pem" -days "$DAYS" \
    -subj "/CN=xds-server compose xDS CA" 2>/dev/null

# issue NAME KEY CERT USAGE: a leaf for DNS:NAME signed by the CA.
issue() {
    printf 'subjectAltName = DNS:%s\nextendedKeyUsage = %s\nbasicConstraints = critical, CA:FALSE\n' \
        "$1" "$4" > "$work/ext"
    # shellcheck disable=SC2086
    openssl req $ec -keyout "$2" -out "$work/csr" -subj "/CN=$1" 2>/dev/null
    openssl x509 -req -in "$work/csr" -CA "$CA_DIR/ca.pem" -CAkey "$CA_DIR/ca.key" \
        -CAcreateserial -CAserial "$work/serial" -out "$3" -days "$DAYS" \
        -extfile "$work/ext" 2>/dev/null
}

issue "$CONTROLLER_NAME" "$CONTROLLER_DIR/controller.key" "$CONTROLLER_DIR/controller.crt" serverAuth
issue "$ENVOY_NODE_ID" "$ENVOY_DIR/envoy.key" "$ENVOY_DIR/envoy.crt" clientAuth
cp "$CA_DIR/ca.pem" "$CONTROLLER_DIR/ca.pem"
cp "$CA_DIR/ca.pem" "$ENVOY_DIR/ca.pem"
chmod 0644 "$CONTROLLER_DIR/controller.crt" "$CONTROLLER_DIR/ca.pem" \
    "$ENVOY_DIR/envoy.crt" "$ENVOY_DIR/ca.pem"
chmod 0755 "$CONTROLLER_DIR" "$ENVOY_DIR"
# The Envoy image drops to its own user (uid 101 unless ENVOY_UID says otherwise).
chown "$ENVOY_UID" "$ENVOY_DIR/envoy.key"
echo "make-certs: made a CA, DNS:$CONTROLLER_NAME for the controller, DNS:$ENVOY_NODE_ID for Envoy"

#!/usr/bin/env bash
# Makes a throwaway CA, a server certificate for 127.0.0.1/localhost and a
# device certificate (CN device-1) in DIR (default build/tls), for trying
# the TLS listener of `make run TLS_DIR=...` or envoy/static.yaml. All keys
# are ECDSA P-256. `make tls-example` runs it; README.md, "TLS", shows the
# same commands. Not for production: the CA key sits beside the rest.
set -euo pipefail
dir=${1:-build/tls}
device=${2:-device-1}
mkdir -p "$dir"
cd "$dir"

# The CA.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 365 \
  -subj "/O=mqtt-sticky example/CN=mqtt-sticky example CA" -keyout ca.key -out ca.crt

# The server certificate Envoy presents on 8883.
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -subj "/CN=localhost" -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 -out server.crt \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')

# A device certificate: its CN is the MQTT client ID the device must use.
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -subj "/O=example/CN=$device" -keyout "$device.key" -out "$device.csr"
openssl x509 -req -in "$device.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 -out "$device.crt" \
  -extfile <(printf 'subjectAltName=URI:spiffe://example/%s\nextendedKeyUsage=clientAuth\n' "$device")

rm -f ./*.csr ca.srl
chmod 600 ./*.key
echo "wrote $dir: ca.crt, server.crt/.key, $device.crt/.key"

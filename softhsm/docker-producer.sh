#!/usr/bin/env bash
# A producer container's entry point: `casign ARGS...` as the producer `docker-setup.sh` made
# (CASIGN_PRODUCER_ID, `www` by default): its identity, its HMAC secret and its Redis user, from
# the env file in its secret folder (the password is read from its 0400 file).
set -euo pipefail
producer=${CASIGN_PRODUCER_ID:-www}
producer_dir=${CASIGN_PRODUCER_DIR:-/run/casign/producers/$producer}
# shellcheck source=/dev/null
source "$producer_dir/$producer.env"
exec casign "$@"

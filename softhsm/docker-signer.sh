#!/usr/bin/env bash
# The signer container's entry point: the worker, as the signer's Redis user. Its CA folder,
# SoftHSM token and Redis password were made by `docker-setup.sh`, which also wrote the env file
# sourced here (the broker and store URLs; the password is read from its 0400 file).
set -euo pipefail
state=${CASIGN_STATE_DIR:-/var/lib/casign}
ca=${CASIGN_CA_DIR:-$state/ca}
export SOFTHSM2_CONF=${SOFTHSM2_CONF:-$state/softhsm/softhsm2.conf}
# shellcheck source=/dev/null
source "$ca/intermediate/private/redis/signer.env"
exec casign worker --ca "$ca" "$@"

#!/usr/bin/env bash
# The signer container's entry point: the worker, as the signer's Redis user. Its CA folder,
# SoftHSM token and Redis password were made by `docker-setup.sh`, which also wrote the env file
# sourced here (the broker and store URLs; the password is read from its 0400 file).
#
# A refusal to start (no set-up, or `casign worker` exit 2: a wrong PIN, a missing key or
# producers.toml, an evicting store; its log line says which) is reported once and the
# container then waits, marked unhealthy by STATE/signer-refused, instead of exiting into a
# restart loop (a restart would only refuse again): fix it, then `docker compose restart signer`.
# Any other exit (a crash) is passed on, and Docker starts the signer again.
set -euo pipefail
state=${CASIGN_STATE_DIR:-/var/lib/casign}
ca=${CASIGN_CA_DIR:-$state/ca}
refused_marker=${CASIGN_SIGNER_REFUSED:-$state/signer-refused}
env_file=$ca/intermediate/private/redis/signer.env
export SOFTHSM2_CONF=${SOFTHSM2_CONF:-$state/softhsm/softhsm2.conf}

refused() {
    local reason="casign signer: $*"
    echo "$reason; waiting here instead of restarting, which would refuse again: fix it, then \`docker compose restart signer\`" >&2
    printf '%s\n' "$reason" >"$refused_marker"
    local sleeper
    sleep infinity &
    sleeper=$!
    trap 'kill "$sleeper" 2>/dev/null || true; exit 0' TERM INT
    wait "$sleeper" || true
    exit 0
}

rm -f "$refused_marker"
if [[ ! -r $env_file ]]; then
    refused "no set-up found ($env_file is missing): \`docker compose up\` runs the setup service first, and \`docker compose logs setup\` says why it failed"
fi
# shellcheck source=/dev/null
source "$env_file"

# Not exec: the exit status tells a refusal from a crash. SIGTERM and SIGINT (docker stop,
# Ctrl-C) are passed on to the worker, which stops within its grace period.
casign worker --ca "$ca" "$@" &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null || true' TERM INT
status=0
wait "$worker" || status=$?
while kill -0 "$worker" 2>/dev/null; do # a trapped signal ended the first wait, not the worker
    status=0
    wait "$worker" || status=$?
done
trap - TERM INT
if ((status == 2)); then
    refused "the worker refused to start (exit 2; the line above says why)"
fi
exit "$status"

#!/usr/bin/env bash
# The signer container's entry point: on first start make a SoftHSM token and a CA whose
# intermediate key is generated inside it, then run the worker.
set -euo pipefail
state=/var/lib/casign
hsm=$state/softhsm
ca=${CASIGN_CA_DIR:-$state/ca}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ ! -e $hsm/user-pin ]]; then
    "$here/make-token.sh" "$hsm" casign intermediate none
fi
export SOFTHSM2_CONF=$hsm/softhsm2.conf

if [[ ! -e $ca/intermediate/certs/intermediate.cert.pem ]]; then
    (umask 0377 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$state/root-passphrase")
    casign init "$ca" --key-type rsa4096 \
        --passphrase-file "$state/root-passphrase" \
        --intermediate-key-uri "pkcs11:token=casign;object=intermediate?pin-source=file:$hsm/user-pin"
fi

exec casign worker --ca "$ca"

#!/usr/bin/env bash
# The signer container's entry point: on first start make a SoftHSM token and a CA whose
# intermediate key is generated inside it, then run the worker.
#
# The signer never holds the root key or its passphrase. A fresh compose project has no CA, so
# the root pair is made here once: its key is encrypted under a random passphrase that exists
# only in a pipe while `casign init` reads it (written nowhere), and the key is removed from the
# volume as soon as the intermediate is signed. The root certificate stays: producers trust it.
# A root you can use again (to sign a new intermediate, say) is made on an offline machine
# instead: run `casign init` there, keep ca/private/ca.key.pem on offline media, and copy the
# rest of the CA folder into this volume before the first start.
set -euo pipefail
state=${CASIGN_STATE_DIR:-/var/lib/casign}
hsm=$state/softhsm
ca=${CASIGN_CA_DIR:-$state/ca}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ ! -e $hsm/user-pin ]]; then
    "$here/make-token.sh" "$hsm" casign intermediate none
fi
export SOFTHSM2_CONF=$hsm/softhsm2.conf

if [[ ! -e $ca/intermediate/certs/intermediate.cert.pem ]]; then
    casign init "$ca" --key-type rsa4096 \
        --root-passphrase-file <(od -An -tx1 -N32 /dev/urandom | tr -d ' \n') \
        --intermediate-key-uri "pkcs11:token=casign;object=intermediate?pin-source=file:$hsm/user-pin"
    rm -f "$ca/private/ca.key.pem"
fi

# No producers listed yet (`ca/intermediate/producers.toml`): serve any producer that can reach
# the queue, and say so in the log. List them to close the signer to everyone else.
open=()
if [[ ! -e $ca/intermediate/producers.toml ]]; then
    open=(--open)
fi
exec casign worker --ca "$ca" "${open[@]}"

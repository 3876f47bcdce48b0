#!/usr/bin/env bash
# docker-compose.yml's one-shot set-up, run before Redis starts. On the first run: a SoftHSM
# token and a CA whose intermediate key is generated inside it, and the example producer
# (producers.toml entry, HMAC secret and Redis password, 0400). On every run: the Redis users of
# the signer and the operator (their passwords kept, made on the first run, in the CA folder)
# and the producer, written to the ACL file Redis loads (its default user off; hashes only),
# and for each role an env file its entry script sources: the broker and store URLs with the
# role's user, whose password the shell reads from its file (`$(cat FILE)`).
#
#   docker-setup.sh                       the above
#   docker-setup.sh NAME [OPTION...]      add producer NAME (`casign producer add` options) in
#                                         /run/casign/producers/NAME, with its env file
#
# Every path can be moved by its variable, so the script also runs outside Docker.
set -euo pipefail
state=${CASIGN_STATE_DIR:-/var/lib/casign}
hsm=$state/softhsm
ca=${CASIGN_CA_DIR:-$state/ca}
acl=${CASIGN_ACL_FILE:-/acl/users.acl}
producer=${CASIGN_EXAMPLE_PRODUCER:-www}
producers=${CASIGN_PRODUCERS_DIR:-/run/casign/producers}
producer_dir=${CASIGN_PRODUCER_DIR:-$producers/$producer}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${CASIGN_BROKER_URL:?set CASIGN_BROKER_URL to the broker the roles use, without a password}"
: "${CASIGN_STORE_URL:?set CASIGN_STORE_URL to the store the roles use, without a password}"

failed() {
    echo "casign set-up: $*" >&2
    exit 1
}

if [[ ! -e $ca/intermediate/certs/intermediate.cert.pem && -e $hsm ]]; then
    # No CA, yet a token: an earlier first run failed after making it (perhaps with the key
    # inside, which `casign init` would refuse to make again). No certificate names that key,
    # so it is set aside, not used, and this run starts afresh.
    aside=$hsm.failed-$(date -u +%Y%m%dT%H%M%SZ)
    mv "$hsm" "$aside"
    echo "casign set-up: no CA yet, so the token of an earlier failed set-up was moved to $aside" >&2
fi
if [[ ! -e $hsm/user-pin ]]; then
    "$here/make-token.sh" "$hsm" casign intermediate none ||
        failed "making the SoftHSM token in $hsm failed (above); run the set-up again once fixed"
fi
export SOFTHSM2_CONF=$hsm/softhsm2.conf

if [[ ! -e $ca/intermediate/certs/intermediate.cert.pem ]]; then
    # The root key is encrypted under a random passphrase that exists only in a pipe while
    # `casign init` reads it, and removed once the intermediate is signed: the signer's volume
    # never holds it. A root you can use again is made offline (README, "Keep the root offline").
    # `casign init` leaves no part of a CA when it fails, and the next run makes a new token.
    casign init "$ca" --key-type rsa4096 \
        --root-passphrase-file <(od -An -tx1 -N32 /dev/urandom | tr -d ' \n') \
        --intermediate-key-uri "pkcs11:token=casign;object=intermediate?pin-source=file:$hsm/user-pin" ||
        failed "\`casign init\` failed (the line above says why); nothing of the CA was kept, so \`docker compose up\` tries again from the start"
    rm -f "$ca/private/ca.key.pem"
fi

# The exports of what casign printed: URLs whose password is `$(cat FILE)`, never the password.
env_file() {
    local target=$1
    shift
    mkdir -p -m 0700 "$(dirname "$target")"
    "$@" | grep '^export ' >"$target.tmp"
    chmod 0444 "$target.tmp"
    mv -f "$target.tmp" "$target"
}

# Producer $1 with `casign producer add` options $2...: its files in its folder, its user in
# the ACL file, its env file beside them; nothing when it is there already.
add_producer() {
    local name=$1 folder
    shift
    if [[ $name == "$producer" ]]; then folder=$producer_dir; else folder=$producers/$name; fi
    if [[ ! -e $folder/$name.secret ]]; then
        env_file "$folder/$name.env" casign producer add "$name" --ca "$ca" \
            --secret-dir "$folder" --acl-file "$acl" "$@"
    fi
}

if (($#)); then
    add_producer "$@"
    exit
fi
for role in signer operator; do
    env_file "$ca/intermediate/private/redis/$role.env" \
        casign acl add "$role" --ca "$ca" --acl-file "$acl"
done
add_producer "$producer" --profiles server_cert --names "$producer.example.com"

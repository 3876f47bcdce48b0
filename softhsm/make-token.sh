#!/usr/bin/env bash
# Make a SoftHSM token in DIR holding one signing key pair made inside the token, and print
# the key's pkcs11: URI and the SOFTHSM2_CONF line that finds the token.
#
#   softhsm/make-token.sh DIR LABEL OBJECT [rsa2048|rsa4096|p256|none]
#
# With `none` the token is made empty, for `casign init --intermediate-key-uri` to generate the
# key in it: that is the README's way. Without it (rsa2048 by default) the script makes the key
# itself, for a signer that is given an existing key; `casign init` then refuses to make another.
#
# The SO and user PINs are random, written to DIR/so-pin and DIR/user-pin (mode 0400) and
# handed to pkcs11-tool through its environment (env:NAME), never on a command line.
set -euo pipefail

usage() {
    echo "usage: $0 DIR LABEL OBJECT [rsa2048|rsa4096|p256|none]" >&2
    exit 2
}

die() {
    echo "$0: $*" >&2
    exit 1
}

# RFC 3986 percent-encoding of every byte outside the unreserved set and $2 (extra safe bytes).
percent_encode() {
    local LC_ALL=C text=$1 safe=${2:-} encoded="" char i
    for ((i = 0; i < ${#text}; i++)); do
        char=${text:i:1}
        if [[ $char == [A-Za-z0-9._~-] || (-n $safe && $safe == *"$char"*) ]]; then
            encoded+=$char
        else
            printf -v char '%%%02X' "'$char"
            encoded+=$char
        fi
    done
    printf '%s' "$encoded"
}

random_hex() {
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

[[ $# -eq 3 || $# -eq 4 ]] || usage
dir=$1 label=$2 object=$3 key=${4:-rsa2048}
case $key in
    rsa2048) key_type=rsa:2048 ;;
    rsa4096) key_type=rsa:4096 ;;
    p256) key_type=EC:prime256v1 ;;
    none) key_type= ;;
    *) usage ;;
esac
[[ -n $label && -n $object ]] || usage

module=${CASIGN_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[[ -f $module ]] || die "PKCS#11 module $module not found (install softhsm2 or set CASIGN_PKCS11_MODULE)"
command -v pkcs11-tool >/dev/null || die "pkcs11-tool not found (install opensc)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
export SOFTHSM2_CONF=$dir/softhsm2.conf
if [[ ! -e $SOFTHSM2_CONF ]]; then
    template=$(<"$here/softhsm2.conf.template")
    printf '%s\n' "${template//@TOKENDIR@/$dir/tokens}" >"$SOFTHSM2_CONF"
fi

p11() {
    pkcs11-tool --module "$module" "$@"
}

if p11 --list-token-slots 2>/dev/null | sed -n 's/^  token label *: //p' | grep -Fqx -- "$label"; then
    die "$dir/tokens already has a token labelled '$label'; nothing done"
fi
for pin_file in "$dir/so-pin" "$dir/user-pin"; do
    [[ ! -e $pin_file ]] || die "$pin_file exists (DIR already holds a token); nothing done"
done

so_pin=$(random_hex)
user_pin=$(random_hex)
key_id=$(random_hex)
(
    umask 0377
    printf '%s\n' "$so_pin" >"$dir/so-pin"
    printf '%s\n' "$user_pin" >"$dir/user-pin"
)

# SoftHSM keeps exactly one uninitialised slot; that is where the new token goes.
free_slot=$(p11 --list-slots | awk '/^Slot /{slot = $3} /token state: *uninitialized/{gsub(/[()]/, "", slot); print slot; exit}')
[[ -n $free_slot ]] || die "SoftHSM offers no free slot in $dir/tokens"

CASIGN_SO_PIN=$so_pin p11 --slot "$free_slot" --init-token --label "$label" \
    --so-pin env:CASIGN_SO_PIN >/dev/null
CASIGN_SO_PIN=$so_pin CASIGN_USER_PIN=$user_pin p11 --token-label "$label" \
    --login --login-type so --so-pin env:CASIGN_SO_PIN \
    --init-pin --new-pin env:CASIGN_USER_PIN >/dev/null
if [[ -n $key_type ]]; then
    # Without --extractable pkcs11-tool makes the private key non-extractable.
    CASIGN_USER_PIN=$user_pin p11 --token-label "$label" --login --pin env:CASIGN_USER_PIN \
        --keypairgen --key-type "$key_type" --label "$object" --id "$key_id" \
        --usage-sign --sensitive >/dev/null
    echo "made token '$label' with $key key '$object' in $dir/tokens (for \`casign init\` to make the key, run with none instead)" >&2
else
    echo "made empty token '$label' in $dir/tokens; \`casign init CA --intermediate-key-uri URI\` makes the key '$object'" >&2
fi
token_part=$(percent_encode "$label")
object_part=$(percent_encode "$object")
pin_part=$(percent_encode "$dir/user-pin" /:)
module_part=$(percent_encode "$module" /:)
printf 'pkcs11:token=%s;object=%s?pin-source=file:%s&module-path=%s\n' \
    "$token_part" "$object_part" "$pin_part" "$module_part"
printf 'export SOFTHSM2_CONF=%q\n' "$SOFTHSM2_CONF"

# Sourced before every step (as root, bash). Fail on the first error, and keep apt quiet and patient.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
APT_OPTIONS=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold)

apt_install() {
    apt-get "${APT_OPTIONS[@]}" update
    apt-get "${APT_OPTIONS[@]}" install --no-install-recommends "$@"
}

# write_file PATH MODE BASE64: replace PATH only if its content differs; exit status 0 if it changed.
write_file() {
    local path=$1 mode=$2 content
    content=$(printf '%s' "$3" | base64 -d; printf x)
    content=${content%x}
    if [ -f "$path" ] && [ "$(cat "$path"; printf x)" = "${content}x" ]; then
        chmod "$mode" "$path"
        return 1
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s' "$content" > "$path.labctl-new"
    chmod "$mode" "$path.labctl-new"
    mv "$path.labctl-new" "$path"
}

# firewalld orders itself before network-pre.target, and cloud-init's network stage runs after
# the network yet before sysinit.target: at the next boot systemd breaks that cycle by dropping
# one of the two (firewalld/firewalld#414, canonical/cloud-init#6502). Starting firewalld once
# the network is up, a moment later than it would, keeps both.
firewalld_boot_order() {
    local unit=/lib/systemd/system/firewalld.service
    [ -f "$unit" ] || return 0
    if write_file /etc/systemd/system/firewalld.service 0644 \
        "$(grep -v -e '^Before=network-pre.target' -e '^Wants=network-pre.target' "$unit" | base64 -w0)"; then
        systemctl daemon-reload
    fi
}

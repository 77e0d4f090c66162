#!/usr/bin/env bash
# Install or remove citygate as a systemd service.
#
#   systemd/install.sh install   [--wheels DIR]   # DIR: wheels prepared on another machine (offline)
#   systemd/install.sh uninstall                  # keeps /etc/citygate and /var/lib/citygate
#   systemd/install.sh wheels DIR                 # prepare DIR for an offline install (needs PyPI)
#
# DESTDIR=/some/root installs into a staging root (packaging, tests): nothing is
# started and no user is created there. Never installs anything at run time.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
destdir=${DESTDIR:-}
prefix=${PREFIX:-/opt/citygate}
python=${PYTHON:-python3}
unitdir=/etc/systemd/system
sysusersdir=/usr/lib/sysusers.d
tmpfilesdir=/usr/lib/tmpfiles.d

say() { printf 'citygate: %s\n' "$*"; }

# pip builds in the source tree, where setuptools reuses whatever an earlier build left
# in build/lib: a module deleted since would ship. Build from a copy of the sources.
sources=""
copy_sources() {
    sources=$(mktemp -d)
    trap 'rm -rf "$sources"' EXIT
    tar -C "$repo" --exclude=__pycache__ --exclude=plugin-template \
        -cf - pyproject.toml README.md agent drivers config | tar -C "$sources" -xf -
}
live() { [ -z "$destdir" ] && [ -d /run/systemd/system ]; }

install_citygate() {
    local wheels=""
    if [ "${1:-}" = "--wheels" ]; then
        wheels=$(cd "${2:?--wheels needs a directory}" && pwd)
    fi
    [ -n "$destdir" ] || [ "$(id -u)" = 0 ] || { say "run as root (or set DESTDIR)"; exit 1; }
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "needs Python >= 3.11"; exit 1; }

    say "virtual environment in $prefix/venv"
    mkdir -p "$destdir$prefix"
    "$python" -m venv "$destdir$prefix/venv"
    local pip=("$destdir$prefix/venv/bin/python" -m pip --disable-pip-version-check --quiet)
    if [ -n "$wheels" ]; then
        say "offline install from $wheels"
        "${pip[@]}" install --no-index --find-links "$wheels" citygate
    else
        copy_sources
        "${pip[@]}" install "$sources"
    fi
    cp "$repo/README.md" "$destdir$prefix/README.md"

    install -D -m 0644 "$here/citygate.service" "$destdir$unitdir/citygate.service"
    install -D -m 0644 "$here/citygate.sysusers" "$destdir$sysusersdir/citygate.conf"
    install -D -m 0644 "$here/citygate.tmpfiles" "$destdir$tmpfilesdir/citygate.conf"
    mkdir -p "$destdir/etc/citygate"
    if [ ! -e "$destdir/etc/citygate/gateway.toml" ]; then
        install -m 0640 "$repo/config/gateway.example.toml" "$destdir/etc/citygate/gateway.toml"
        say "example config written to /etc/citygate/gateway.toml: edit it, then run citygate check"
    else
        say "/etc/citygate/gateway.toml kept"
    fi
    if [ ! -e "$destdir/etc/citygate/mqtt-password" ]; then
        install -m 0600 /dev/null "$destdir/etc/citygate/mqtt-password"
    fi
    ln -sfn "$prefix/venv/bin/citygate" "$destdir$prefix/citygate"

    if live; then
        systemd-sysusers "$sysusersdir/citygate.conf"
        systemd-tmpfiles --create "$tmpfilesdir/citygate.conf"
        chgrp citygate /etc/citygate/gateway.toml
        systemctl daemon-reload
        say "installed; start with: systemctl enable --now citygate"
    else
        say "installed into ${destdir:-/} (systemd not running here: no user created, nothing started)"
    fi
}

uninstall_citygate() {
    [ -n "$destdir" ] || [ "$(id -u)" = 0 ] || { say "run as root (or set DESTDIR)"; exit 1; }
    if live; then
        systemctl disable --now citygate.service 2>/dev/null || true
    fi
    rm -f "$destdir$unitdir/citygate.service" "$destdir$sysusersdir/citygate.conf" \
        "$destdir$tmpfilesdir/citygate.conf"
    rm -rf "$destdir$prefix"
    if live; then
        systemctl daemon-reload
    fi
    say "removed; config in /etc/citygate and data in /var/lib/citygate are kept"
}

prepare_wheels() {
    local dir=${1:?wheels needs a directory}
    mkdir -p "$dir"
    copy_sources
    "$python" -m pip wheel --quiet --wheel-dir "$dir" "$sources"
    say "wheels for an offline install are in $dir; copy it with the repository to the gateway"
}

case "${1:-}" in
    install) shift; install_citygate "$@" ;;
    uninstall) uninstall_citygate ;;
    wheels) shift; prepare_wheels "$@" ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac

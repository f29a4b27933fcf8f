#!/usr/bin/env bash
# Sets up today's Guix (1.5.0, from Debian sid) in a debootstrapped root,
# with its own guix-daemon, next to the Guix 1.2.0 of setup-guix.sh (see
# ../shared/GUIX.md, "Today's Guix").  Idempotent: every step is skipped
# when its result is already there, so it is safe to run again and again.
# Must run as root.
#
#   CUIRASS_GUIX_ROOT   where the root lives (default /var/tmp/cuirass-guix-1.5.0;
#                       kept between runs on the same machine)
#
# Inside the root, the root's own host path is a symlink to "/", so that a
# path under the root means the same file inside and outside: tests make
# their repositories and databases under ROOT/tmp and pass those paths to
# the binary they run with `chroot ROOT`.
set -euo pipefail

log() { echo "setup-guix-today: $*" >&2; }

root=${CUIRASS_GUIX_ROOT:-/var/tmp/cuirass-guix-1.5.0}
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

mount_root() {
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mountpoint -q "$root/dev" || mount --rbind /dev "$root/dev"
    mountpoint -q "$root/sys" || mount --rbind /sys "$root/sys"
}

# What the tests use inside the root besides Guix: git for checkouts, make
# for specifications that compile, busybox-static for builders in the store.
packages=(guix ca-certificates git make busybox-static)
installed() {
    local ok
    ok=$(chroot "$root" dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)
    [ "$ok" = "${#packages[@]}" ]
}
if ! { [ -x "$root/usr/bin/guix" ] && installed; }; then
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    [ -n "$uri" ] || { log "no URIs: line in /etc/apt/sources.list.d/debian.sources"; exit 1; }
    command -v debootstrap >/dev/null || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    }
    if [ ! -x "$root/usr/bin/apt-get" ]; then
        log "debootstrap sid into $root"
        rm -rf "$root.partial"
        debootstrap --variant=minbase sid "$root.partial" "$uri" >/dev/null
        mv "$root.partial" "$root"
    fi
    mount_root
    log "installing ${packages[*]} in $root"
    # sid's Release file is past its Valid-Until date in the archive snapshot.
    chroot "$root" apt-get -qq -o Acquire::Check-Valid-Until=false update
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
    chroot "$root" guix --version | head -1 | grep -q ' 1\.5\.0$' ||
        { log "the root's guix is not 1.5.0: $(chroot "$root" guix --version | head -1)"; exit 1; }
fi

# Builders must live in the store under 1.5.0: a static busybox whose
# applet is chosen by argv[0], added to the store by the job files.
mkdir -p "$root/opt/static-sh"
[ -x "$root/opt/static-sh/busybox" ] || cp "$root/bin/busybox" "$root/opt/static-sh/busybox"
ln -sfn busybox "$root/opt/static-sh/sh"

# The root's own host path, inside the root, leads back to its "/".
mkdir -p "$root$(dirname "$root")"
[ -L "$root$root" ] || ln -s / "$root$root"

mount_root
mkdir -p "$root/gnu/store" "$root/var/guix" "$root/var/log/guix" "$root/tmp"
chmod 1777 "$root/tmp"

socket=$root/var/guix/daemon-socket/socket
daemon_answers() {
    [ -S "$socket" ] && timeout 30 chroot "$root" guix repl -- /dev/stdin \
        <<<'(use-modules (guix store)) (with-store s (exit (if (valid-path? s "/gnu/store/x") 1 0)))' \
        >/dev/null 2>&1
}
if daemon_answers; then
    log "guix-daemon 1.5.0 already answers on $socket"
    exit 0
fi
rm -f "$socket"
log "starting guix-daemon 1.5.0 in $root"
setsid chroot "$root" guix-daemon --disable-chroot >>"$root/var/log/guix/daemon.log" 2>&1 </dev/null &
for _ in $(seq 1 150); do
    [ -S "$socket" ] && break
    sleep 0.1
done
[ -S "$socket" ] || { log "guix-daemon did not create $socket (see $root/var/log/guix/daemon.log)"; exit 1; }
log "guix-daemon 1.5.0 listening on $socket"

#!/usr/bin/env bash
# Installs Guix 1.2.0 from Debian bullseye (see ../shared/GUIX.md) and starts
# guix-daemon in the background.  Idempotent: safe to run again and again.
# Must run as root.  Set GUIX_DAEMON_LISTEN to a socket path for a private
# daemon; by default the daemon listens on /var/guix/daemon-socket/socket.
set -euo pipefail

log() { echo "setup-guix: $*" >&2; }

if ! guix-daemon --version >/dev/null 2>&1; then
    # Reuse the archive address already configured on this machine.
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    [ -n "$uri" ] || { log "no URIs: line in /etc/apt/sources.list.d/debian.sources"; exit 1; }
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bullseye main" \
        > /etc/apt/sources.list.d/cuirass-bullseye.list
    printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' \
        > /etc/apt/preferences.d/cuirass-bullseye
    log "installing guix 1.2.0 from bullseye"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        guix/bullseye guile-gcrypt/bullseye guile-git/bullseye guile-json/bullseye \
        guile-sqlite3/bullseye guile-zlib/bullseye guile-lzlib/bullseye \
        guile-bytestructures/bullseye guile-ssh/bullseye guile-gnutls/bullseye >/dev/null
fi

# The tests of channel introductions sign commits with a key they make
# (tests/it/specs.rs): gpg runs here, on the host, beside git.
if ! command -v gpg >/dev/null 2>&1; then
    log "installing gnupg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnupg >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnupg >/dev/null; }
fi

mkdir -p /gnu/store /var/guix /var/log/guix
socket=${GUIX_DAEMON_LISTEN:-/var/guix/daemon-socket/socket}

daemon_answers() {
    [ -S "$socket" ] && GUIX_DAEMON_SOCKET=$socket timeout 20 guix repl -- /dev/stdin \
        <<<'(use-modules (guix store)) (with-store s (exit (if (valid-path? s "/gnu/store/x") 1 0)))' \
        >/dev/null 2>&1
}

if daemon_answers; then
    log "guix-daemon already answers on $socket"
    exit 0
fi

rm -f "$socket"
args=(--disable-chroot)
[ -n "${GUIX_DAEMON_LISTEN:-}" ] && args+=("--listen=$socket")
log "starting guix-daemon ${args[*]}"
setsid guix-daemon "${args[@]}" >>/var/log/guix/daemon.log 2>&1 < /dev/null &
for _ in $(seq 1 100); do
    [ -S "$socket" ] && break
    sleep 0.1
done
[ -S "$socket" ] || { log "guix-daemon did not create $socket (see /var/log/guix/daemon.log)"; exit 1; }
log "guix-daemon listening on $socket"

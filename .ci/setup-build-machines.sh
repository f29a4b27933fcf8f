#!/usr/bin/env bash
# Makes two build machines for `guix offload` on this machine, and a
# guix-daemon of the Guix 1.5.0 root that offloads to them (see
# ../shared/GUIX.md, "Build machines for `guix offload`").  Idempotent:
# what is there and working is kept.  Must run as root, after
# setup-guix-today.sh.
#
#   CUIRASS_GUIX_ROOT   the Guix 1.5.0 root (default /var/tmp/cuirass-guix-1.5.0)
#
# Each machine M (m1, m2) has:
#   - its own root, /var/tmp/cuirass-build-machines/M: hard links of a
#     copy of the main root made once (`tar --one-file-system`, without
#     proc, sys, dev, tmp, the store and the daemon's state), so that its
#     store, daemon database and keys are its own and nothing is shared
#     with a running daemon (an overlay over the live root deadlocks);
#   - its own network namespace, cuirass-M, joined to this machine by a
#     veth pair on a private test subnet: 10.231.N.1 here, 10.231.N.2 there;
#   - its own guix-daemon and sshd, started in that namespace;
#   - signing keys authorized both ways with the offloading daemon.
#
# The main root's own daemon, which every other test shares, is left
# alone: it has no machines.scm.  The offloading daemon is a second
# guix-daemon in the same root and store, listening on
# ROOT/var/guix/offload-socket/socket, whose configuration directory
# (GUIX_CONFIGURATION_DIRECTORY, honoured by the daemon and by the
# `guix offload` and `guix authenticate` it runs) is ROOT/etc/guix-offload:
# machines.scm, the main root's signing key, and an acl of its own.
set -euo pipefail

log() { echo "setup-build-machines: $*" >&2; }

root=${CUIRASS_GUIX_ROOT:-/var/tmp/cuirass-guix-1.5.0}
cache=/var/tmp/cuirass-build-machines
conf=/etc/guix-offload
offload_socket=/var/guix/offload-socket/socket
machines=(m1 m2)
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
[ -x "$root/usr/bin/guix" ] || { log "run setup-guix-today.sh first"; exit 1; }

in_root() { chroot "$root" "$@"; }

# openssh-server must be in the main root before the copy is made; its
# postinst must not try to start a service in a chroot.
if [ ! -x "$root/usr/sbin/sshd" ]; then
    log "installing openssh-server in $root"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
    DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends openssh-server >/dev/null ||
        { in_root apt-get -qq -o Acquire::Check-Valid-Until=false update &&
              DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends openssh-server >/dev/null; }
    rm -f "$root/usr/sbin/policy-rc.d"
fi

# The main root's keys: SSH (for guix offload) and archive signing.
mkdir -p "$root/root/.ssh" && chmod 700 "$root/root/.ssh"
[ -f "$root/root/.ssh/id_ed25519" ] || in_root ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
[ -f "$root/etc/guix/signing-key.sec" ] || in_root guix archive --generate-key

# A copy of the main root, made once; machines are hard links of it.
base=$cache/base
if [ ! -f "$base/.complete" ]; then
    log "copying $root to $base (once)"
    rm -rf "$base" && mkdir -p "$base"
    tar -C "$root" --one-file-system -cf - \
        --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./tmp \
        --exclude=./gnu --exclude=./var/guix --exclude=./var/log/guix \
        --exclude=./etc/guix --exclude=./root/.ssh --exclude=./etc/ssh/ssh_host_\* \
        --exclude=".$root" . | tar -C "$base" -xf -
    mkdir -p "$base/proc" "$base/sys" "$base/dev" "$base/tmp" "$base/gnu/store" \
        "$base/var/guix" "$base/var/log/guix" "$base/etc/guix" "$base/run/sshd"
    chmod 1777 "$base/tmp"
    touch "$base/.complete"
fi

mkdir -p "$root$conf"
for key in signing-key.pub signing-key.sec; do
    ln -sfn "/etc/guix/$key" "$root$conf/$key"
done

host_keys=()
n=0
for m in "${machines[@]}"; do
    n=$((n + 1))
    mroot=$cache/$m
    ns=cuirass-$m
    here=10.231.$n.1
    there=10.231.$n.2
    if [ ! -f "$mroot/.complete" ]; then
        log "making $mroot"
        # A half-made machine may have /dev bound in it: unbind before
        # removing anything.
        for d in proc dev sys; do
            ! mountpoint -q "$mroot/$d" || umount -R "$mroot/$d"
        done
        rm -rf --one-file-system "$mroot"
        # Hard links: nothing in /usr or /etc is written in place there;
        # the store, the daemon's state and the keys are new files.
        cp -al "$base" "$mroot"
        rm -f "$mroot/.complete"
    fi
    mountpoint -q "$mroot/proc" || mount -t proc proc "$mroot/proc"
    mountpoint -q "$mroot/dev" || mount --rbind /dev "$mroot/dev"
    mountpoint -q "$mroot/sys" || mount --rbind /sys "$mroot/sys"
    if [ ! -f "$mroot/.complete" ]; then
        chroot "$mroot" ssh-keygen -A >/dev/null
        chroot "$mroot" guix archive --generate-key
        touch "$mroot/.complete"
    fi
    mkdir -p "$mroot/root/.ssh" && chmod 700 "$mroot/root/.ssh"
    cp "$root/root/.ssh/id_ed25519.pub" "$mroot/root/.ssh/authorized_keys"

    # Network: a namespace and a veth pair, only these names and addresses.
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    # A pair whose far end is not in this namespace (the namespace was
    # deleted and made again) is made again.
    if ! ip netns exec "$ns" ip link show eth0 >/dev/null 2>&1; then
        ! ip link show "$ns" >/dev/null 2>&1 || ip link del "$ns"
        ip link add "$ns" type veth peer name eth0 netns "$ns"
        ip addr add "$here/24" dev "$ns"
        ip netns exec "$ns" ip addr add "$there/24" dev eth0
    fi
    # A test may have brought the link down to stop the machine.
    ip link set "$ns" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set eth0 up

    # Keys both ways: the machine accepts what the offloading daemon sends,
    # and the offloading daemon (its own acl) accepts what comes back.
    chroot "$mroot" guix archive --authorize <"$root/etc/guix/signing-key.pub"
    GUIX_CONFIGURATION_DIRECTORY=$conf in_root guix archive --authorize <"$mroot/etc/guix/signing-key.pub"

    # Daemon and sshd of the machine, in its namespace.
    pidfile=$cache/$m.daemon.pid
    if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [ -S "$mroot/var/guix/daemon-socket/socket" ]; }; then
        rm -f "$mroot/var/guix/daemon-socket/socket"
        log "starting guix-daemon of $m"
        setsid ip netns exec "$ns" chroot "$mroot" guix-daemon --disable-chroot \
            >>"$cache/$m.daemon.log" 2>&1 </dev/null &
        echo $! >"$pidfile"
    fi
    sshd_pidfile=$cache/$m.sshd.pid
    if ! { [ -f "$sshd_pidfile" ] && kill -0 "$(cat "$sshd_pidfile")" 2>/dev/null; }; then
        log "starting sshd of $m on $there"
        mkdir -p "$mroot/run/sshd"
        setsid ip netns exec "$ns" chroot "$mroot" /usr/sbin/sshd -D \
            -o PermitRootLogin=prohibit-password -o ListenAddress="$there" \
            -o UseDNS=no -o MaxStartups=100 -o MaxSessions=100 \
            >>"$cache/$m.sshd.log" 2>&1 </dev/null &
        echo $! >"$sshd_pidfile"
    fi
    key=$(cut -d' ' -f1,2 "$mroot/etc/ssh/ssh_host_ed25519_key.pub")
    # The host load is shared by every "machine" here, so the overload
    # threshold (0.8 by default) would keep them all idle.
    host_keys+=("  (build-machine (name \"$there\") (systems (list \"x86_64-linux\"))
                 (host-key \"$key\") (user \"root\")
                 (private-key \"/root/.ssh/id_ed25519\")
                 (parallel-builds 2) (overload-threshold #f))")
done

{
    echo ";; Written by .ci/setup-build-machines.sh."
    echo "(list"
    printf '%s\n' "${host_keys[@]}"
    echo ")"
} >"$root$conf/machines.scm.new"
mv "$root$conf/machines.scm.new" "$root$conf/machines.scm"

# The offloading daemon: same root and store, its own socket and config.
socket=$root$offload_socket
pidfile=$cache/offload-daemon.pid
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [ -S "$socket" ]; }; then
    rm -f "$socket"
    log "starting the offloading guix-daemon on $socket"
    setsid env GUIX_CONFIGURATION_DIRECTORY=$conf chroot "$root" guix-daemon --disable-chroot \
        --listen="$offload_socket" >>"$root/var/log/guix/offload-daemon.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
fi
for _ in $(seq 1 150); do
    ok=1
    [ -S "$socket" ] || ok=0
    for m in "${machines[@]}"; do
        [ -S "$cache/$m/var/guix/daemon-socket/socket" ] || ok=0
    done
    [ $ok = 1 ] && break
    sleep 0.1
done
[ $ok = 1 ] || { log "a daemon did not create its socket (see $cache/*.log)"; exit 1; }
n=0
for m in "${machines[@]}"; do
    n=$((n + 1))
    for _ in $(seq 1 50); do
        timeout 1 bash -c "exec 3<>/dev/tcp/10.231.$n.2/22" 2>/dev/null && continue 2
        sleep 0.1
    done
    log "sshd of $m does not answer on 10.231.$n.2:22 (see $cache/$m.sshd.log)"
    exit 1
done
log "build machines ${machines[*]} ready; offloading daemon on $socket"

#!/usr/bin/env bash
# Runs deploy/Dockerfile's build stage without Docker, for machines that have no container
# runtime (like Kite's CI machines): a Debian bookworm root made with debootstrap stands in for
# the base image, and the stage's ARG/WORKDIR/COPY/RUN instructions are executed in it, in
# order, as written in the Dockerfile. Then every binary the runtime stage copies must exist
# and start (`--version`). Needs root, about 25 minutes and 4 GB of disk. Cleans up after
# itself unless KITE_KEEP_ROOTFS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
if [ "$(id -u)" -ne 0 ]; then
    echo "check-dockerfile.sh: run as root (debootstrap and chroot)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
# The same Debian mirror the host uses.
mirror=$( (grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null || true; \
           grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print "URIs: "$2}' || true) \
          | awk '{print $2}' | grep -v security | head -1)
root=$(mktemp -d /tmp/kite-dockerfile.XXXXXX)
cleanup() {
    for m in dev/pts dev proc sys; do umount -l "$root/$m" 2>/dev/null || true; done
    if [ -z "${KITE_KEEP_ROOTFS:-}" ]; then rm -rf "$root"; fi
}
trap cleanup EXIT
echo "[check] debootstrap bookworm from $mirror into $root" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The official debian:bookworm image lists bookworm, bookworm-updates and bookworm-security (the
# Dockerfile's rustc-web and LLVM come from the latter); the host's deb822 sources are that list.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
fi
# Local CAs of the host (a TLS-inspecting proxy's, say) are trusted in the chroot as on the
# host; the Dockerfile's ca-certificates install picks them up.
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sys "$root/sys"

# The build stage: from its FROM to the next FROM, continuation lines joined.
stage=$(awk '/^FROM .* AS build/{on=1; next} /^FROM /{on=0} on' deploy/Dockerfile \
        | sed -e 's/[[:space:]]*#.*$//' | awk '{ if (sub(/\\$/, "")) { buf = buf $0 " " } else { print buf $0; buf = "" } }')
workdir=/
envs=()
while IFS= read -r line; do
    [ -n "${line// }" ] || continue
    instr=${line%% *}
    rest=${line#* }
    case "$instr" in
        ARG) envs+=("$rest") ;;
        WORKDIR) workdir=$rest; mkdir -p "$root$workdir" ;;
        COPY)
            [ "$rest" = ". ." ] || { echo "unsupported COPY $rest" >&2; exit 1; }
            echo "[check] COPY . $workdir" >&2
            tar -C "$src" --exclude=./target --exclude=./.git -cf - . | tar -C "$root$workdir" -xf -
            ;;
        RUN)
            echo "[check] RUN ${rest:0:100}…" >&2
            chroot "$root" /usr/bin/env -i PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin \
                HOME=/root "${envs[@]}" /bin/sh -c "cd $workdir && $rest"
            ;;
        *) echo "unsupported instruction $instr" >&2; exit 1 ;;
    esac
done <<<"$stage"

# Every binary the manifests and the docs run must be in /out and start.
for b in kite-agent kite-loader kite-webhook kite-init kite-tui; do
    chroot "$root" "/out/$b" --version >&2 || { echo "[check] $b is missing or does not start" >&2; exit 1; }
done
echo "[check] the Dockerfile's build stage works" >&2

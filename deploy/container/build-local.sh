#!/usr/bin/env bash
# Builds the engine's runtime image FROM scratch around an already built binary, for
# machines that cannot pull base images (see Containerfile.local beside this file).
#
#   deploy/container/build-local.sh [BINARY] [IMAGE]
#     BINARY  default target/release/arreglame (cargo build --release --bin arreglame)
#     IMAGE   default localhost/arreglame:local
#
# Needs buildah (apt-get install -y buildah), strip (binutils) and ldd.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/release/arreglame}"
image="${2:-localhost/arreglame:local}"
[[ -x "$bin" ]] || { echo "no executable at $bin (cargo build --release --bin arreglame)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "buildah is missing (apt-get install -y buildah)" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs"/{usr/local/bin,bin,etc,tmp,app/logs}
chmod 1777 "$rootfs/tmp"

# The binary, without its debug info (the image does not need line tables).
strip -o "$rootfs/usr/local/bin/arreglame" "$bin"
# bash and grep for the HEALTHCHECK (GET /health over /dev/tcp), sh for `sh -c` entrypoints.
cp /bin/bash /bin/grep "$rootfs/bin/"
ln -s bash "$rootfs/bin/sh"

# Every shared library those executables load, at the path the dynamic loader looks for it.
for exe in "$rootfs/usr/local/bin/arreglame" "$rootfs/bin/bash" "$rootfs/bin/grep"; do
  ldd "$exe" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
# glibc's resolver reads these; the container runtime fills in hosts and resolv.conf.
cat > "$rootfs/etc/passwd" <<'P'
root:x:0:0:root:/root:/usr/sbin/nologin
arreglame:x:10001:10001:arreglame:/app:/usr/sbin/nologin
P
cat > "$rootfs/etc/group" <<'G'
root:x:0:
arreglame:x:10001:
G
echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
chown -R 10001:10001 "$rootfs/app"

cp "$here/Containerfile.local" "$ctx/Containerfile"
# Docker format so that HEALTHCHECK is kept (the OCI format has no such field).
buildah bud --format docker --layers=false -f "$ctx/Containerfile" -t "$image" "$ctx"
echo "built $image"

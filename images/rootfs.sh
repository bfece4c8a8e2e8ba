#!/usr/bin/env bash
# Lays out an image's root filesystem: one binary, and if it is dynamically linked, exactly the
# shared libraries it loads (as `ldd` resolves them on the build machine, Debian 12 here and in
# the Dockerfiles' rust:bookworm stage), the few /etc files glibc reads and the CA bundle. No
# shell, no package manager, nothing else. `make images` (images/build.sh) and the Dockerfiles
# both call it, so the two ways of building give the same files.
#
#   images/rootfs.sh BINARY PATH_IN_IMAGE ROOTFS_DIR
set -euo pipefail

if [ "$#" -ne 3 ]; then
    echo "usage: $0 BINARY PATH_IN_IMAGE ROOTFS_DIR" >&2
    exit 2
fi
binary=$1 path_in_image=$2 rootfs=$3

[ -f "$binary" ] || { echo "$binary: no such file; build it first" >&2; exit 1; }
mkdir -p "$rootfs$(dirname "$path_in_image")"
install -m 0755 "$binary" "$rootfs$path_in_image"

# `ldd` on a static executable prints "not a dynamic executable" and fails: nothing to add.
if ! libraries=$(ldd "$binary" 2>/dev/null); then
    exit 0
fi
# Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or, for the loader,
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
grep -oE '(=> )?/[^ ]+' <<<"$libraries" | sed 's/^=> //' | sort -u | while read -r library; do
    mkdir -p "$rootfs$(dirname "$library")"
    # The path the loader asks for, holding the real file (not a symlink into nowhere).
    cp -L "$library" "$rootfs$library"
    chmod 0755 "$rootfs$library"
done

# The users the images run as (65532, as distroless names it), for tools that look them up;
# name resolution from files, then DNS (glibc's built-in modules: no libnss_* needed).
mkdir -p "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"

# The system CA bundle (Debian's ca-certificates), as distroless images carry it: kube's
# rustls client loads it whenever a kubeconfig names no CA of its own, and fails to start
# without one, even for a plain-HTTP server.
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || { echo "$bundle missing: apt-get install ca-certificates" >&2; exit 1; }
mkdir -p "$rootfs/etc/ssl/certs"
install -m 0644 "$bundle" "$rootfs$bundle"

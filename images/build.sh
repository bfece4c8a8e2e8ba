#!/usr/bin/env bash
# `make images`: the controller, webhook and noop images, from the binaries this build made,
# with no Docker engine, no daemon and no registry. umoci (Debian's package) writes each as an
# OCI image layout; skopeo turns it into an archive that `kind load image-archive`,
# `docker load` and `podman load` take. umoci because it builds an image from a directory in
# a few plain commands, writes the standard layout with no storage driver or daemon to set up
# (buildah needs containers-storage and, unprivileged, user namespaces), and runs the same as
# root in CI as on a laptop.
#
# Out: target/images/<name>/ (OCI layout, tag = the version) and target/images/<name>.tar
# (docker-archive for kind, tagged with the name the manifests use: the release's,
# ghcr.io/kainlite/kube-prefetch-<name>:<version>; one name only, as the kubelet reports any
# one of an image's names in a pod's status).
#
#   images/build.sh            (after `cargo build --profile image` and the noop build)
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
out=$target/images
# One source of truth for what the images say about themselves.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
revision=${PREFETCH_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml)
licenses=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license = "\(.*\)"/\1/p' Cargo.toml)
registry=${IMAGE_REGISTRY:-ghcr.io/kainlite}
# The commit's time, so the same commit gives the same timestamps.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

for tool in umoci skopeo; do
    command -v "$tool" >/dev/null || {
        echo "images: $tool is required (Debian: apt-get install umoci skopeo)" >&2
        exit 1
    }
done

# build_image NAME BINARY PATH_IN_IMAGE USER DESCRIPTION
build_image() {
    local name=$1 binary=$2 path_in_image=$3 user=$4 description=$5
    local layout=$out/$name rootfs
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' RETURN
    images/rootfs.sh "$binary" "$path_in_image" "$rootfs/rootfs"
    # The layer: GNU tar with fixed owners, order and times, so one commit gives one layer.
    # (Debian 12's umoci 0.4.7 `insert` wrote layers here that stop right after the last
    # file's bytes, without tar's padding and end blocks: tests/images.rs failed to read them.)
    tar --create --file "$rootfs/layer.tar" --directory "$rootfs/rootfs" --format=ustar \
        --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" .

    rm -rf "$layout" "$layout.tar"
    umoci init --layout "$layout"
    umoci new --image "$layout:$version"
    umoci raw add-layer --image "$layout:$version" --history.created "$created" \
        --history.created_by "images/rootfs.sh $path_in_image" "$rootfs/layer.tar"
    umoci config --image "$layout:$version" --created "$created" \
        --history.created "$created" --history.created_by "images/build.sh" \
        --config.user "$user" --config.entrypoint "$path_in_image" \
        --config.label "org.opencontainers.image.title=kube-prefetch-$name" \
        --config.label "org.opencontainers.image.description=$description" \
        --config.label "org.opencontainers.image.version=$version" \
        --config.label "org.opencontainers.image.revision=$revision" \
        --config.label "org.opencontainers.image.source=$source_url" \
        --config.label "org.opencontainers.image.licenses=$licenses"
    umoci gc --layout "$layout"
    local reference="$registry/kube-prefetch-$name:$version"
    skopeo copy --quiet "oci:$layout:$version" "docker-archive:$layout.tar:$reference"
    echo "images: $layout ($version) and $layout.tar ($reference)"
}

mkdir -p "$out"
build_image controller "$target/image/prefetch-controller" /usr/local/bin/prefetch-controller \
    65532:65532 "kube-prefetch reconciler: prefetch pods, status, warm nodes, warm rollouts"
build_image webhook "$target/image/prefetch-webhook" /usr/local/bin/prefetch-webhook \
    65532:65532 "kube-prefetch admission webhook: defaults, validation, rollout signal and gate"
build_image noop "$target/noop/release/noop" /noop \
    65534:65534 "kube-prefetch noop: what every prefetch pod runs"

# Viperblock CSI: one image with every binary, for the controller Deployment
# and the node DaemonSet (deploy/kubernetes picks the binary with `command`).
#
#   docker build -t ghcr.io/viperblock/viperblock-csi:v0.1.0 \
#     --build-arg VERSION=v0.1.0 --build-arg COMMIT=$(git rev-parse HEAD) .
#
# The build stage runs the project's own `make build`, the target its tests
# use: bin/controller, bin/node, bin/vblock and the nbdkit plugin (cgo).

FROM golang:1.26.8-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends nbdkit-plugin-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .git is not in the build context: pass the version and commit the
# binaries report (the Makefile stamps them with the same -ldflags as a
# local `make build`), e.g.
#   --build-arg VERSION=$(git describe --tags --always --dirty) --build-arg COMMIT=$(git rev-parse HEAD)
# without them they report "dev".
ARG VERSION=
ARG COMMIT=
ARG BUILD_DATE=
RUN make build VERSION="$VERSION" COMMIT="$COMMIT" BUILD_DATE="$BUILD_DATE"

FROM debian:bookworm-slim
# nbdkit serves each staged volume through the plugin; nbdfuse (in
# libnbd-bin) + fuse3 + losetup attach it where the kernel has no nbd
# module, kmod loads nbd where it has; mkfs, fsck and resize for ext4 and
# xfs; blkid, mount and umount from util-linux and mount.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      nbdkit libnbd-bin fuse3 e2fsprogs xfsprogs util-linux mount kmod ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/controller /src/bin/node /src/bin/vblock /usr/local/bin/
# The node plugin's default --plugin path.
COPY --from=build /src/lib/nbdkit-viperblock-plugin.so /usr/lib/viperblock/nbdkit-viperblock-plugin.so
ENV VBLOCK_PLUGIN=/usr/lib/viperblock/nbdkit-viperblock-plugin.so
CMD ["/usr/local/bin/vblock", "--help"]

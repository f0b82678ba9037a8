# shellcheck shell=bash
# The images the shipped manifests name, made here without a container
# engine and imported into the e2e cluster's containerd. Sourced by run.sh
# after cluster.sh (oci_image, layer_tar, ctr_).
#
# The driver's image follows the Dockerfile, read at run time so the two
# cannot drift: its final stage's `apt-get install` list becomes a Debian
# rootfs (mmdebstrap, minbase, no recommends: what debian:bookworm-slim plus
# that apt-get gives), cached per package list; its `COPY --from=build`
# lines name the files `make build` made (/src/X is the repository's X);
# its ENV and CMD become the image config. `image.sh plan` prints what was
# read; test/e2e/manifests_test.go checks that plan against the Dockerfile.
#
# The sidecars: csi-provisioner, csi-attacher, csi-snapshotter and
# csi-resizer are the upstream commands at the pinned versions, built by
# build.sh; csi-node-driver-registrar and livenessprobe are not on the Go
# module proxy, so their images hold the harness's own registrar and
# livenessprobe (k8sbuild/cmd), which take the upstream flags.

[ -n "${REPO:-}" ] || REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DOCKERFILE=$REPO/Dockerfile

# df_final_stage prints the Dockerfile's last stage, continuation lines
# joined.
df_final_stage() {
  awk '
    /^FROM /{buf=""}
    {buf = buf $0 "\n"}
    END{printf "%s", buf}' "$DOCKERFILE" | sed -e ':a' -e '/\\$/N; s/\\\n//; ta'
}

# df_packages: the packages of the final stage's apt-get install.
df_packages() {
  df_final_stage | grep -E '^RUN .*apt-get install' | head -1 |
    sed -e 's/.*apt-get install//' -e 's/&&.*//' | tr ' ' '\n' | grep -v -e '^-' -e '^$' | sort
}

# df_copies: "SRC DST" per file copied from the build stage (DST a full path).
df_copies() {
  df_final_stage | awk '$1 == "COPY" && $2 == "--from=build" {
    dst = $NF
    for (i = 3; i < NF; i++) {
      src = $i; base = src; sub(/.*\//, "", base)
      print src, (dst ~ /\/$/ ? dst base : dst)
    }
  }'
}

# df_env: KEY=VALUE per ENV line of the final stage.
df_env() { df_final_stage | awk '$1 == "ENV" {sub(/^ENV +/, ""); print}'; }

# df_cmd: the CMD's JSON array.
df_cmd() { df_final_stage | sed -n 's/^CMD *//p'; }

# df_base: the final stage's FROM image.
df_base() { df_final_stage | awk '$1 == "FROM" {print $2; exit}'; }

image_plan() {
  echo "base $(df_base)"
  echo "packages $(df_packages | tr '\n' ' ')"
  df_copies | while read -r src dst; do echo "copy ${src#/src/} $dst"; done
  df_env | sed 's/^/env /'
  echo "cmd $(df_cmd)"
}

# base_rootfs prints the path of a cached tar of the Debian rootfs with the
# Dockerfile's packages, building it when missing.
base_rootfs() {
  local base suite pkgs key out
  base=$(df_base)
  case "$base" in debian:*-slim) suite=${base#debian:}; suite=${suite%-slim} ;; *)
    log "the Dockerfile's final stage is FROM $base; the recipe knows debian:SUITE-slim" >&2; return 1 ;; esac
  pkgs=$(df_packages | paste -sd, -)
  [ -n "$pkgs" ] || { log "no apt-get install list in the Dockerfile's final stage" >&2; return 1; }
  key=$(printf '%s %s minbase\n' "$suite" "$pkgs" | sha256sum | cut -c1-16)
  out=$CACHE_ROOT/rootfs-$suite-$key.tar
  if [ -s "$out" ]; then echo "$out"; return 0; fi
  command -v mmdebstrap >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends mmdebstrap >/dev/null
  } || return 1
  log "building the $suite rootfs with $pkgs (cached as $out)" >&2
  # mmdebstrap's apt fails when it inherits the harness's extra
  # descriptors (the run lock, the saved stdout and stderr): close them.
  mmdebstrap --quiet --variant=minbase --include="$pkgs" \
    --aptopt='APT::Install-Recommends "false"' \
    "$suite" "$out.tmp.tar" http://deb.debian.org/debian >&2 3>&- 4>&- 8>&- 9>&- || { rm -rf "$out.tmp.tar"; return 1; }
  mv "$out.tmp.tar" "$out"
  echo "$out"
}

# json_env prints the config's Env array: the base image's PATH, then the
# Dockerfile's ENV lines.
json_env() {
  local e out='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
  while IFS= read -r e; do
    [ -n "$e" ] && out+=",\"${e//\"/\\\"}\""
  done < <(df_env)
  echo "[$out]"
}

# driver_image REF: builds and imports the driver's image.
driver_image() {
  local ref=$1 rootfs top src dst
  rootfs=$(base_rootfs) || return 1
  top=$R/images/driver-top
  rm -rf "$top"; mkdir -p "$top"
  while read -r src dst; do
    src=$REPO/${src#/src/}
    [ -f "$src" ] || { log "the Dockerfile copies $src, which make build did not make" >&2; return 1; }
    install -D -m 0755 "$src" "$top$dst"
  done < <(df_copies)
  layer_tar "$top" "$R/images/driver-top.tar" || return 1
  oci_image "$ref" "$R/images/driver.tar" \
    "{\"Env\":$(json_env),\"Cmd\":$(df_cmd)}" "$rootfs" "$R/images/driver-top.tar" || return 1
  ctr_ images import "$R/images/driver.tar" >/dev/null
}

# static_image REF BINARY NAME: an image of one static binary at /NAME,
# its entrypoint (as the upstream sidecar images have it).
static_image() {
  local ref=$1 bin=$2 name=$3 d=$R/images/$3
  rm -rf "$d"; mkdir -p "$d"
  install -m 0755 "$bin" "$d/$name"
  layer_tar "$d" "$d.tar" || return 1
  oci_image "$ref" "$R/images/$name-image.tar" "{\"Entrypoint\":[\"/$name\"],\"Env\":[\"PATH=/\"]}" "$d.tar" || return 1
  ctr_ images import "$R/images/$name-image.tar" >/dev/null
}

# sidecar_images MANIFEST: imports an image for every sidecar the rendered
# manifests name, under that exact name.
sidecar_images() {
  local ref name bin
  for ref in $(grep -o 'image: registry.k8s.io/sig-storage/[^ ]*' "$1" | awk '{print $2}' | sort -u); do
    name=${ref##*/}; name=${name%%:*}
    case "$name" in
      csi-node-driver-registrar) bin=$R/bin/registrar ;;
      livenessprobe) bin=$R/bin/livenessprobe ;;
      *) bin=$BIN/$name ;;
    esac
    [ -x "$bin" ] || { log "no binary for image $ref ($bin)" >&2; return 1; }
    static_image "$ref" "$bin" "$name" || return 1
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # Run directly: `image.sh plan` prints what the recipe reads from the
  # Dockerfile.
  case "${1:-}" in
    plan) image_plan ;;
    *) echo "usage: $0 plan" >&2; exit 2 ;;
  esac
fi

# shellcheck shell=bash
# The upstream External Storage suite (k8s.io/kubernetes/test/e2e/storage,
# driven by testdriver.yaml) against the e2e cluster with the driver
# deployed. Sourced by run.sh after lib.sh, cluster.sh and driver.sh, like
# scenarios.sh: functions only. Needs R, BIN, E2E_DIR, log, kc, ctr_,
# oci_image and layer_tar. CONFORMANCE.md explains the design.
#
#   upstream_images            the test images, built here from files and
#                              imported into containerd under the exact
#                              names the suite uses (nothing is pulled)
#   conformance_run MODE [DIR] MODE full: every spec of the selection;
#                              subset: the specs in conformance-subset.txt.
#                              Reports under DIR (default $R/conformance);
#                              prints "k8s storage suite: N passed, N
#                              failed, N skipped"; non-zero if any failed
#   conformance_dryrun [DIR]   the selection without a cluster: counts, and
#                              a check that every subset line names a spec
#
# Every spec runs in its own e2e.test process under --ginkgo.timeout, the
# per-spec timeout (Ginkgo has no per-spec timeout flag: its --timeout is
# the whole suite's), VB_E2E_CONFORMANCE_PROCS of them at a time; the
# [Serial] and [Disruptive] specs run afterwards, one at a time. With
# VB_E2E_CONFORMANCE_RUNNER=ginkgo the parallel part runs instead as one
# `ginkgo run --procs=N e2e.test` (one suite timeout, no per-spec one).
#
# Environment:
#   VB_E2E_CONFORMANCE_PROCS         specs at a time (default 3)
#   VB_E2E_CONFORMANCE_SPEC_TIMEOUT  per-spec timeout (default 15m)
#   VB_E2E_CONFORMANCE_RUNNER        spec (default) or ginkgo
#   VB_E2E_CONFORMANCE_SUBSET_FILE   the list subset mode runs (default
#                                    conformance-subset.txt): e.g. the
#                                    specs a full run failed, again
#   VB_E2E_CONFORMANCE_KEEP_REPORTS  1: keep each spec's full Ginkgo JSON
#                                    report (5 MB each: every spec of the
#                                    binary is in it, most as skipped)

CONFORMANCE_DRIVER_FILE=$E2E_DIR/testdriver.yaml
CONFORMANCE_SUBSET_FILE=${VB_E2E_CONFORMANCE_SUBSET_FILE:-$E2E_DIR/conformance-subset.txt}
# The shipped classes testdriver.yaml names (manifests_test.go checks).
CONFORMANCE_STORAGECLASS=viperblock-ext4
CONFORMANCE_SNAPSHOTCLASS=viperblock-snapshots
# The text every spec of the selection starts with (external.go).
CONFORMANCE_PREFIX="External Storage [Driver: $DRIVER] "

# The images the selected specs run (test/utils/image/manifest.go in
# Kubernetes $K8S_VERSION; conformance_run checks them against
# `e2e.test --list-images`).
CONFORMANCE_BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
CONFORMANCE_AGNHOST=registry.k8s.io/e2e-test-images/agnhost:2.66.1
CONFORMANCE_GLIBC=registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1
CONFORMANCE_NGINX=registry.k8s.io/e2e-test-images/nginx:1.27.0-2
CONFORMANCE_PAUSE=registry.k8s.io/pause:3.10.2

# conformance_excluded: the specs of the selection that the harness does
# not run, as "REGEXP<TAB>REASON" lines (REGEXP is matched against the
# name after CONFORMANCE_PREFIX). They count as skipped.
conformance_excluded() {
  printf '%s\t%s\n' \
    '^\[Testpattern: Dynamic PV \(default fs\)\] provisioning should provision storage with any volume data source' \
    'deploys the hello-populator and volume-data-source-validator images (registry.k8s.io/sig-storage), which the harness does not build' \
    'subPath should remount stale subpath bind mount after network filesystem disruption' \
    "unmounts the subPath bind mounts through a host-exec pod and stops the container with crictl: the host-exec pod enters PID 1's mount namespace, which on this cluster is the host's (the nodes share the host's PID namespace), not the node's, and the nodes have no crictl" \
    'volumeMode should not mount / map unused volumes in a pod' \
    "lists the pod's volume directories through a host-exec pod, which on this cluster sees the host's /var/lib/kubelet, not the node's: the check would pass without looking"
  # Growing a mounted ext4 (the default fs) is EXT4_IOC_RESIZE_FS, which
  # the kernel allows only with CAP_SYS_RESOURCE; where root lacks it (some
  # sandboxes) the driver answers FailedPrecondition and grows the
  # filesystem at the next stage instead, and these specs would wait 10
  # minutes each for an online growth that cannot happen. The xfs and raw
  # block variants, and the ext4 growth at restage, still run; the vm tier
  # grows a mounted ext4 in a guest.
  if ! conformance_cap_sys_resource; then
    local why="this machine's root lacks CAP_SYS_RESOURCE, which the kernel requires to grow a mounted ext4"
    printf '%s\t%s\n' \
      '^\[Testpattern: Dynamic PV \(default fs\)\(allowExpansion\)\] volume-expand should resize volume when PVC is edited while pod is using it$' "$why" \
      '^\[Testpattern: Generic Ephemeral-volume \(default fs\) \((immediate|late)-binding\)\] ephemeral should support expansion of pvcs created for ephemeral pvcs$' "$why"
  fi
}

# conformance_cap_sys_resource: this process may use CAP_SYS_RESOURCE.
conformance_cap_sys_resource() {
  local eff; eff=$(awk '/^CapEff/{print $2}' /proc/self/status)
  (( (16#$eff >> 24) & 1 ))
}

conformance_bins() {
  local b ok=0
  for b in e2e.test ginkgo kubectl; do
    if [ ! -x "$BIN/$b" ]; then
      log "conformance: $BIN/$b is missing: build.sh builds it"
      ok=1
    fi
  done
  command -v jq >/dev/null || { log "conformance: jq is missing (apt-get install jq)"; ok=1; }
  return $ok
}

# upstream_images: builds the test images from files and imports them into
# containerd (every node's) under the names the suite uses:
#   busybox            Debian's static busybox and its applets
#   agnhost            the static agnhost binary at /agnhost (the upstream
#                      Dockerfile's path and entrypoint), over the busybox
#                      layer (upstream's base is alpine: tests run sh, dd,
#                      md5sum, nsenter... in agnhost containers)
#   glibc-dns-testing  a Debian rootfs (the driver image's base, base_rootfs):
#                      glibc and coreutils, as upstream's Debian-based image;
#                      multiVolume writes with coreutils' `dd oflag=nocache`
#   nginx              the busybox layer (volumes' exec test runs sh -c in
#                      it); its default command says it is no nginx
#   pause              the harness's pause binary (build.sh helpers)
upstream_images() {
  local i=$R/images/upstream p a d
  local path='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  if ldd /bin/busybox >/dev/null 2>&1; then
    log "/bin/busybox is dynamically linked: install busybox-static"
    return 1
  fi
  if ldd "$BIN/agnhost" >/dev/null 2>&1 || [ ! -x "$BIN/agnhost" ]; then
    log "$BIN/agnhost is missing or not static: build.sh builds it with CGO_ENABLED=0"
    return 1
  fi
  [ -x "$R/bin/pause" ] || { log "$R/bin/pause is missing: build.sh helpers $R/bin"; return 1; }
  local debian
  debian=$(base_rootfs) || { log "no Debian rootfs for $CONFORMANCE_GLIBC"; return 1; }
  rm -rf "$i"
  mkdir -p "$i/bb/bin" "$i/bb/sbin" "$i/bb/usr/bin" "$i/bb/usr/sbin" "$i/bb/etc" "$i/bb/tmp" "$i/bb/root" \
    "$i/agn/uploads" "$i/agn/etc" "$i/pause" || return 1
  cp /bin/busybox "$i/bb/bin/busybox" || return 1
  # Every applet in /bin, as in the busybox images; the ones busybox puts
  # elsewhere (usr/bin/md5sum, sbin/losetup...) there too.
  for p in $(/bin/busybox --list-full); do
    a=${p##*/}
    [ "$a" = busybox ] && continue
    ln -sf busybox "$i/bb/bin/$a"
    d=${p%/*}
    [[ "$p" == */* && "$d" != bin ]] && mkdir -p "$i/bb/$d" && ln -sf /bin/busybox "$i/bb/$p"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$i/bb/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$i/bb/etc/group"
  chmod 1777 "$i/bb/tmp"
  cp "$BIN/agnhost" "$i/agn/agnhost" && ln -s agnhost "$i/agn/agnhost-2" || return 1
  # The user and group the upstream Dockerfile adds.
  cat "$i/bb/etc/passwd" >"$i/agn/etc/passwd" &&
    echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$i/agn/etc/passwd" &&
    printf 'root:x:0:\nnobody:x:65534:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >"$i/agn/etc/group" || return 1
  cp "$R/bin/pause" "$i/pause/pause" || return 1
  layer_tar "$i/bb" "$i/busybox-layer.tar" && layer_tar "$i/agn" "$i/agnhost-layer.tar" &&
    layer_tar "$i/pause" "$i/pause-layer.tar" || return 1
  oci_image "$CONFORMANCE_BUSYBOX" "$i/busybox.tar" "{\"Cmd\":[\"sh\"],\"Env\":[\"$path\"]}" "$i/busybox-layer.tar" &&
    oci_image "$CONFORMANCE_AGNHOST" "$i/agnhost.tar" \
      "{\"Entrypoint\":[\"/agnhost\"],\"Cmd\":[\"pause\"],\"Env\":[\"$path\"],\"WorkingDir\":\"/\"}" \
      "$i/busybox-layer.tar" "$i/agnhost-layer.tar" &&
    oci_image "$CONFORMANCE_GLIBC" "$i/glibc.tar" "{\"Cmd\":[\"sh\"],\"Env\":[\"$path\"]}" "$debian" &&
    oci_image "$CONFORMANCE_NGINX" "$i/nginx.tar" \
      "{\"Cmd\":[\"sh\",\"-c\",\"echo 'not nginx: the e2e harness built this image from busybox for the storage tests' >&2; exit 1\"],\"Env\":[\"$path\"]}" \
      "$i/busybox-layer.tar" &&
    oci_image "$CONFORMANCE_PAUSE" "$i/pause.tar" '{"Entrypoint":["/pause"]}' "$i/pause-layer.tar" || return 1
  for p in busybox agnhost glibc nginx pause; do
    ctr_ images import "$i/$p.tar" >/dev/null || { log "ctr images import $i/$p.tar failed"; return 1; }
  done
  rm -rf "$i/bb" "$i/agn" "$i/pause" "$i"/*-layer.tar
  touch "$i/imported"
  log "imported $CONFORMANCE_BUSYBOX $CONFORMANCE_AGNHOST $CONFORMANCE_GLIBC $CONFORMANCE_NGINX $CONFORMANCE_PAUSE"
}

# conformance_focus NAME: an exact-match Ginkgo focus for one spec (Ginkgo
# matches "Kubernetes e2e suite " + the spec's text).
conformance_focus() {
  printf '%s$' "$(printf '%s' "$CONFORMANCE_PREFIX$1" | sed -e 's/[][\\.*^$+?(){}|]/\\&/g')"
}

# conformance_select MODE DIR: the dry run of the driver's selection, then
# DIR/selection.tsv: one "CLASS<TAB>NAME<TAB>REASON" line per spec to
# report, CLASS parallel, serial or excluded.
conformance_select() {
  local mode=$1 dir=$2 focus
  focus="$(printf '%s' "$CONFORMANCE_PREFIX" | sed -e 's/[][\\.*^$+?(){}|]/\\&/g')"
  "$BIN/e2e.test" --storage.testdriver="$CONFORMANCE_DRIVER_FILE" --ginkgo.dry-run --ginkgo.no-color \
    --ginkgo.focus="$focus" --ginkgo.json-report="$dir/dryrun.json" >"$dir/dryrun.log" 2>&1 || {
    log "conformance: the dry run failed (is $CONFORMANCE_DRIVER_FILE valid?):"
    tail -20 "$dir/dryrun.log"
    return 1
  }
  jq -r --arg p "$CONFORMANCE_PREFIX" '.[].SpecReports[] | select(.LeafNodeType == "It" and .State == "passed")
      | [.ContainerHierarchyTexts[]?, .LeafNodeText] | map(select(. != "" and . != null)) | join(" ")
      | select(startswith($p)) | .[($p | length):]' "$dir/dryrun.json" | sort >"$dir/all.txt"
  rm -f "$dir/dryrun.json"
  [ -s "$dir/all.txt" ] || { log "conformance: the dry run selected no spec of $DRIVER"; return 1; }
  local names=$dir/all.txt
  if [ "$mode" = subset ]; then
    names=$dir/subset.txt
    sed -e 's/[[:space:]]*$//' -e '/^#/d' -e '/^$/d' "$CONFORMANCE_SUBSET_FILE" >"$names"
    local bad
    bad=$(grep -vxF -f "$dir/all.txt" "$names")
    if [ -n "$bad" ]; then
      log "conformance: these lines of $CONFORMANCE_SUBSET_FILE name no spec of the selection:"
      printf '  %s\n' "$bad"
      return 1
    fi
  fi
  local excl name class reason re r
  excl=$(conformance_excluded)
  : >"$dir/selection.tsv"
  while IFS= read -r name; do
    class=parallel reason=
    [[ "$name" == *"[Serial]"* || "$name" == *"[Disruptive]"* ]] && class=serial
    while IFS=$'\t' read -r re r; do
      if [[ "$name" =~ $re ]]; then class=excluded reason=$r; fi
    done <<<"$excl"
    printf '%s\t%s\t%s\n' "$class" "$name" "$reason" >>"$dir/selection.tsv"
  done <"$names"
}

# conformance_dryrun [DIR]: the selection and its counts, without a cluster.
conformance_dryrun() {
  local dir=${1:-${VB_E2E_CONFORMANCE_DIR:-$R/conformance}/dryrun}
  conformance_bins || return 1
  mkdir -p "$dir" || return 1
  conformance_select full "$dir" || return 1
  local all=$dir/all.txt
  log "External Storage specs of $DRIVER: $(wc -l <"$all")"
  log "  [Serial]: $(grep -c '\[Serial\]' "$all"); [Disruptive]: $(grep -c '\[Disruptive\]' "$all"); [Slow]: $(grep -c '\[Slow\]' "$all"); [Feature:...]: $(grep -c '\[Feature:' "$all")"
  log "  run alone ([Serial] or [Disruptive]): $(grep -c '^serial' "$dir/selection.tsv"); excluded by the harness: $(grep -c '^excluded' "$dir/selection.tsv")"
  log "  two nodes: $(grep -c 'retain data across pod recreation on different node' "$all") move volumes to the other node; $(grep -c 'single volume from pods on different node' "$all") need RWX (skipped)"
  conformance_select subset "$dir" || return 1
  log "  subset ($CONFORMANCE_SUBSET_FILE): $(wc -l <"$dir/subset.txt") specs, $(grep -c '^serial' "$dir/selection.tsv") serial, $(grep -c '^excluded' "$dir/selection.tsv") excluded"
}

# conformance_args DIR: the e2e framework's flags (CONF_ARGS) and Ginkgo's
# (CONF_GINKGO, without the "ginkgo." prefix e2e.test wants).
conformance_args() {
  CONF_ARGS=(
    --kubeconfig="$R/pki/admin.kubeconfig"
    --provider=skeleton
    --storage.testdriver="$CONFORMANCE_DRIVER_FILE"
    --kubectl-path="$BIN/kubectl"
    --node-os-distro=debian
    --disable-log-dump=true
    --minStartupPods=0
    --allowed-not-ready-nodes=0
    --node-schedulable-timeout=3m
    --system-pods-startup-timeout=3m
    --system-daemonsets-startup-timeout=1m
    --e2e-output-dir="$1/output"
  )
  CONF_GINKGO=(no-color v poll-progress-after=5m poll-progress-interval=1m grace-period=2m)
}

# conformance_extract REPORT OUT [NAME]: the entries of a Ginkgo JSON
# report that matter (specs that ran or were skipped at run time, suite
# nodes that failed) and the suite's verdict; NAME: the one spec the report
# was run for.
conformance_extract() {
  jq -c --arg for "${3:-}" '{for: (if $for == "" then null else $for end), reports: [.[] | {succeeded: .SuiteSucceeded, special: (.SpecialSuiteFailureReasons // []),
      specs: [.SpecReports[] | select(.State != "skipped" or .Failure != null)
        | {text: ([.ContainerHierarchyTexts[]?, .LeafNodeText] | map(select(. != "" and . != null)) | join(" ")),
           type: .LeafNodeType, state: .State, time: ((.RunTime // 0) / 1e9),
           message: (.Failure.Message // ""),
           location: ((.Failure.Location.FileName // "") + ":" + ((.Failure.Location.LineNumber // 0) | tostring))}]}]}' \
    "$1" >"$2"
}

# conformance_one DIR IDX NAME: one spec in its own e2e.test process.
conformance_one() {
  local dir=$1 d=$1/specs/$2 name=$3 s rc state
  mkdir -p "$d"
  printf '%s\n' "$name" >"$d/name"
  s=$(date +%s)
  KUBE_SSH_KEY_PATH=$dir/no-ssh-key timeout -k 30s "$CONF_HARD_TIMEOUT" "$BIN/e2e.test" "${CONF_ARGS[@]}" \
    "${CONF_GINKGO[@]/#/--ginkgo.}" "${CONF_DRY[@]/#/--ginkgo.}" --ginkgo.timeout="$CONF_SPEC_TIMEOUT" \
    --ginkgo.focus="$(conformance_focus "$name")" --ginkgo.json-report="$d/report.json" >"$d/log" 2>&1
  rc=$?
  echo "$rc" >"$d/rc"
  state="no result (rc $rc)"
  if [ -f "$d/report.json" ]; then
    conformance_extract "$d/report.json" "$d/result.json" "$name" &&
      state=$(jq -r --arg t "$CONFORMANCE_PREFIX$name" '[.reports[].specs[] | select(.type == "It" and .text == $t) | .state] | first // "not run"' "$d/result.json")
    [ "${VB_E2E_CONFORMANCE_KEEP_REPORTS:-0}" = 1 ] || rm -f "$d/report.json"
  fi
  log "$(printf '%-10s %5ss  %s' "$state" "$(($(date +%s) - s))" "$name")"
}

# conformance_ginkgo DIR NAMES-FILE: the specs of NAMES-FILE in one
# `ginkgo run --procs=N`.
conformance_ginkgo() {
  local dir=$1 d=$1/specs/ginkgo focus=() name n
  mkdir -p "$d"
  while IFS= read -r name; do focus+=(--focus="$(conformance_focus "$name")"); done <"$2"
  n=$(wc -l <"$2")
  # The suite's timeout: every spec's, divided among the processes, with room.
  local t=$(( ($(conformance_seconds "$CONF_SPEC_TIMEOUT") * n + CONF_PROCS - 1) / CONF_PROCS + 600 ))
  log "ginkgo run --procs=$CONF_PROCS --timeout=${t}s: $n specs"
  (cd "$d" && KUBE_SSH_KEY_PATH=$dir/no-ssh-key "$BIN/ginkgo" run --procs="$CONF_PROCS" --timeout="${t}s" \
    "${CONF_GINKGO[@]/#/--}" "${CONF_DRY[@]/#/--}" "${focus[@]}" --json-report=report.json --output-dir="$d" \
    "$BIN/e2e.test" -- "${CONF_ARGS[@]}" >"$d/log" 2>&1)
  echo $? >"$d/rc"
  if [ -f "$d/report.json" ]; then
    conformance_extract "$d/report.json" "$d/result.json"
    [ "${VB_E2E_CONFORMANCE_KEEP_REPORTS:-0}" = 1 ] || rm -f "$d/report.json"
  fi
}

# conformance_seconds DURATION: 90s, 15m, 2h or a number of seconds.
conformance_seconds() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

# conformance_summary DIR: DIR/results.json and DIR/junit.xml from the
# selection and the extracted reports; prints failures and the counts line;
# returns 1 if anything failed.
conformance_summary() {
  local dir=$1
  jq -R -s 'split("\n") | map(select(. != "") | split("\t") | {class: .[0], name: .[1], reason: (.[2] // "")})' \
    "$dir/selection.tsv" >"$dir/selection.json" || return 1
  # shellcheck disable=SC2046
  jq -n --slurpfile sel "$dir/selection.json" --arg p "$CONFORMANCE_PREFIX" '
    [inputs | .for as $for | .reports[].specs[] | . + {for: $for}] as $entries
    | def bad: test("^(failed|panicked|interrupted|aborted|timedout)$");
    ([$sel[0][] | . as $s
      | if $s.class == "excluded" then {name: $s.name, result: "skipped", time: 0, message: ("excluded by the harness: " + $s.reason)}
        else ([$entries[] | select(.type == "It" and .text == ($p + $s.name))]) as $e
          | ([$e[] | select(.state | bad)] | first) as $f
          | ([$e[] | select(.state == "passed")] | first) as $ok
          | ([$e[] | select(.state == "skipped")] | first) as $sk
          | if $f != null then {name: $s.name, result: "failed", time: $f.time, message: ($f.state + ": " + $f.message + " (" + $f.location + ")")}
            elif $ok != null then {name: $s.name, result: "passed", time: $ok.time, message: ""}
            elif $sk != null then {name: $s.name, result: "skipped", time: $sk.time, message: $sk.message}
            else ([$entries[] | select(.type != "It" and .for == $s.name and (.state | bad))] | first) as $sf
              | {name: $s.name, result: "failed", time: 0, message: (if $sf != null
                  then "its suite failed before it: [" + $sf.type + "] " + $sf.message + " (" + $sf.location + ")"
                  else "no result: the spec did not run (its process was killed, or its suite failed; see its log)" end)}
            end
        end]) as $specs
    | ([$entries[] | select(.type != "It" and .for == null and (.state | bad))
        | {name: ("[" + .type + "] " + .text), result: "failed", time: .time, message: (.message + " (" + .location + ")")}]) as $suite
    | $specs + $suite' $(find "$dir/specs" -name result.json | sort) >"$dir/results.json" || return 1
  local passed failed skipped
  passed=$(jq '[.[] | select(.result == "passed")] | length' "$dir/results.json")
  failed=$(jq '[.[] | select(.result == "failed")] | length' "$dir/results.json")
  skipped=$(jq '[.[] | select(.result == "skipped")] | length' "$dir/results.json")
  jq -r --arg suite "k8s storage suite ($DRIVER)" '
    def x: tostring | @html;
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "<testsuites><testsuite name=\"\($suite | x)\" tests=\"\(length)\" failures=\"\([.[] | select(.result == "failed")] | length)\" skipped=\"\([.[] | select(.result == "skipped")] | length)\" time=\"\([.[].time] | add // 0)\">",
    (.[] | "  <testcase name=\"\(.name | x)\" classname=\"External Storage\" time=\"\(.time)\">"
       + (if .result == "failed" then "<failure message=\"\(.message | x)\"></failure>"
          elif .result == "skipped" then "<skipped message=\"\(.message | x)\"></skipped>" else "" end)
       + "</testcase>"),
    "</testsuite></testsuites>"' "$dir/results.json" >"$dir/junit.xml"
  if [ "$failed" != 0 ]; then
    echo "---- failed specs (logs under $dir/specs) ----"
    jq -r '.[] | select(.result == "failed") | "FAIL  \(.name)\n      \(.message | split("\n") | first)"' "$dir/results.json"
  fi
  echo "k8s storage suite: $passed passed, $failed failed, $skipped skipped"
  [ "$failed" = 0 ]
}

conformance_no_test_namespaces() { [ -z "$(kc get ns -l e2e-framework -o name 2>/dev/null)" ]; }

# conformance_leftovers: waits (5 min at most) for the test namespaces to
# go and reports what the driver still holds (a warning, not a failure:
# the specs themselves check their cleanup).
conformance_leftovers() {
  wait_until 300 "the e2e test namespaces deleted" conformance_no_test_namespaces ||
    log "WARNING: test namespaces left: $(kc get ns -l e2e-framework -o name | tr '\n' ' ')"
  local pvs
  pvs=$(kc get pv -o jsonpath='{range .items[?(@.spec.csi.driver=="'"$DRIVER"'")]}{.metadata.name} {.status.phase}{"\n"}{end}' 2>/dev/null)
  [ -z "$pvs" ] || log "WARNING: PersistentVolumes of $DRIVER left after the suite: $(echo "$pvs" | tr '\n' ';')"
}

# conformance_cluster_ready: what the suite needs from the cluster, checked
# before any spec runs; imports the test images unless done.
conformance_cluster_ready() {
  if ! kc get storageclass "$CONFORMANCE_STORAGECLASS" >/dev/null || ! kc get volumesnapshotclass "$CONFORMANCE_SNAPSHOTCLASS" >/dev/null; then
    log "conformance: the shipped StorageClass $CONFORMANCE_STORAGECLASS or VolumeSnapshotClass $CONFORMANCE_SNAPSHOTCLASS is missing: is the driver deployed?"
    return 1
  fi
  local img ready images
  images=$("$BIN/e2e.test" --list-images 2>/dev/null)
  for img in "$CONFORMANCE_BUSYBOX" "$CONFORMANCE_AGNHOST" "$CONFORMANCE_GLIBC" "$CONFORMANCE_NGINX" "$CONFORMANCE_PAUSE"; do
    grep -qxF "$img" <<<"$images" ||
      { log "conformance: $img is not an image of e2e.test $K8S_VERSION: update the CONFORMANCE_* names"; return 1; }
  done
  [ -f "$R/images/upstream/imported" ] || step "upstream test images" upstream_images || return 1
  ready=$(kc get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)
  [ "$ready" -ge 2 ] || log "conformance: WARNING: $ready Ready node(s): the specs that move a volume to another node will skip"
}

conformance_run() {
  local mode=${1:-} dir=${2:-${VB_E2E_CONFORMANCE_DIR:-$R/conformance}}
  case "$mode" in
    full | subset) ;;
    *) log "usage: conformance_run full|subset [DIR]"; return 2 ;;
  esac
  conformance_bins || return 1
  CONF_PROCS=${VB_E2E_CONFORMANCE_PROCS:-3}
  CONF_SPEC_TIMEOUT=${VB_E2E_CONFORMANCE_SPEC_TIMEOUT:-15m}
  CONF_HARD_TIMEOUT=$(( $(conformance_seconds "$CONF_SPEC_TIMEOUT") + 600 ))
  local runner=${VB_E2E_CONFORMANCE_RUNNER:-spec}
  rm -rf "$dir" && mkdir -p "$dir/specs" "$dir/output" || return 1

  # VB_E2E_CONFORMANCE_DRYRUN=1 (no cluster): the same commands with
  # --ginkgo.dry-run, which reports every selected spec as passed: a test
  # of this file's plumbing, not of the driver.
  CONF_DRY=()
  if [ "${VB_E2E_CONFORMANCE_DRYRUN:-0}" = 1 ]; then
    CONF_DRY=(dry-run)
    [ "$runner" = ginkgo ] && CONF_PROCS=1 # Ginkgo dry-runs only in series
  else
    conformance_cluster_ready || return 1
  fi

  conformance_select "$mode" "$dir" || return 1
  awk -F'\t' '$1 == "parallel" {print $2}' "$dir/selection.tsv" >"$dir/parallel.txt"
  awk -F'\t' '$1 == "serial" {print $2}' "$dir/selection.tsv" >"$dir/serial.txt"
  log "conformance $mode: $(wc -l <"$dir/selection.tsv") specs: $(wc -l <"$dir/parallel.txt") parallel ($CONF_PROCS at a time), $(wc -l <"$dir/serial.txt") serial, $(grep -c '^excluded' "$dir/selection.tsv") excluded; per-spec timeout $CONF_SPEC_TIMEOUT; reports in $dir"
  awk -F'\t' '$1 == "excluded" {print "  excluded: " $2 "\n    (" $3 ")"}' "$dir/selection.tsv"

  conformance_args "$dir"
  local i=0 name
  if [ "$runner" = ginkgo ]; then
    [ -s "$dir/parallel.txt" ] && conformance_ginkgo "$dir" "$dir/parallel.txt"
    i=1000
  else
    while IFS= read -r name; do
      i=$((i + 1))
      while [ "$(jobs -rp | wc -l)" -ge "$CONF_PROCS" ]; do wait -n; done
      conformance_one "$dir" "$(printf '%03d' "$i")" "$name" </dev/null &
    done <"$dir/parallel.txt"
    wait
  fi
  while IFS= read -r name; do
    i=$((i + 1))
    conformance_one "$dir" "$(printf '%03d' "$i")" "$name" </dev/null
  done <"$dir/serial.txt"

  [ ${#CONF_DRY[@]} = 0 ] && conformance_leftovers
  conformance_summary "$dir"
}

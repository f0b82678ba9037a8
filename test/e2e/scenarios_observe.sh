# shellcheck shell=bash
# Observability scenarios: the engine's metrics and logs as an operator
# sees them. Sourced by run.sh.

# metric_value ID NAME VOLUME [LABEL=VALUE...]: the value of NAME's series
# for VOLUME (and the labels) on node ID's node plugin endpoint, or nothing.
metric_value() {
  local id=$1 name=$2 vol=$3 label lines
  shift 3
  lines=$(node_metric "$id" "^$name\{" | grep -F "volume_id=\"$vol\"")
  for label in "$@"; do
    lines=$(echo "$lines" | grep -F "${label%%=*}=\"${label#*=}\"")
  done
  echo "$lines" | awk 'NF == 2 {print $2 + 0; exit}'
}

# Engine metrics and logs: while a pod writes to a volume on node A, the
# node plugin's metrics endpoint shows the volume's engine up and its
# write ops and bytes, drains and store requests rising; the node plugin's
# log (kubectl logs) carries the engine's lines with the volume's handle.
scenario_observe() {
  local vol ops0 bytes0 ops1 bytes1 puts node_pod_name logs
  pvc obs viperblock-ext4 1Gi && wait_bound obs || return 1
  POD_NODE=$(node_name a) pod obs-w obs 'i=0; while true; do dd if=/dev/urandom of=/data/f$((i % 4)) bs=1M count=4 conv=fsync 2>/dev/null; i=$((i + 1)); echo "wrote $i"; sleep 1; done' &&
    wait_running obs-w || return 1
  vol=$(volume_handle obs)
  [ -n "$vol" ] || fail "no volume handle for pvc obs" || return 1
  wait_until 60 "viperblock_volume_up of $vol" eval '[ "$(metric_value a viperblock_volume_up "$vol")" = 1 ]' ||
    fail "viperblock_volume_up{volume_id=\"$vol\"} is not 1: $(node_metric a "^viperblock_volume_(server_)?up" | tr '\n' ';')" || return 1
  ops0=$(metric_value a viperblock_volume_ops_total "$vol" op=write)
  bytes0=$(metric_value a viperblock_volume_bytes_total "$vol" op=write)
  [ -n "$ops0" ] && [ -n "$bytes0" ] || fail "no write counters for $vol" || return 1
  sleep 10
  ops1=$(metric_value a viperblock_volume_ops_total "$vol" op=write)
  bytes1=$(metric_value a viperblock_volume_bytes_total "$vol" op=write)
  log "   $vol: write ops $ops0 -> $ops1, bytes $bytes0 -> $bytes1"
  awk -v a="$ops0" -v b="$ops1" 'BEGIN {exit !(b > a)}' || fail "viperblock_volume_ops_total{op=write} did not increase: $ops0 -> $ops1" || return 1
  # 10 s of 4 MiB writes per second: at least 4 MiB more.
  awk -v a="$bytes0" -v b="$bytes1" 'BEGIN {exit !(b >= a + 4194304)}' ||
    fail "viperblock_volume_bytes_total{op=write} grew by less than 4 MiB: $bytes0 -> $bytes1" || return 1
  wait_until 60 "a drain of $vol" eval 'awk -v d="$(metric_value a viperblock_volume_drains_total "$vol")" "BEGIN {exit !(d > 0)}"' ||
    fail "viperblock_volume_drains_total of $vol stays 0" || return 1
  puts=$(metric_value a viperblock_store_requests_total "$vol" op=put_if_match result=ok)
  awk -v p="${puts:-0}" 'BEGIN {exit !(p > 0)}' || fail "no manifest commits counted for $vol: $(node_metric a "^viperblock_store_requests_total" | grep -F "$vol" | tr '\n' ';')" || return 1
  [ "$(metric_value a viperblock_volume_fenced "$vol")" = 0 ] || fail "viperblock_volume_fenced of $vol is not 0" || return 1
  log "   $(node_metric a '^viperblock_volume_flush_seconds_count' | grep -F "$vol")"
  log "   $(node_metric a '^viperblock_node_wal_disk_avail_bytes')"
  node_pod_name=$(node_pod "$(node_name a)")
  logs=$(kc -n "$CSI_NS" logs "$node_pod_name" -c node 2>&1 | grep -F "volume_id=\"$vol\"" | grep -F 'source="nbdkit"')
  echo "$logs" | grepq 'volume open' || fail "the node plugin's log has no engine line for $vol: $(echo "$logs" | tail -3)" || return 1
  log "   $(echo "$logs" | grep -m1 'volume open' | cut -c1-200)"
  delete_pod obs-w || return 1
  kc -n "$NS" delete pvc obs --wait=true --timeout=120s >/dev/null || fail "pvc obs not deleted" || return 1
}

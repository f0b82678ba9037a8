// Package driver is the Viperblock CSI driver (csi.viperblock.io): the
// Identity, Controller and Node services. cmd/controller and cmd/node are
// thin mains around it.
//
// # Identifiers
//
// The driver keeps no database: the object stores are the source of truth,
// and IDs say where to look.
//
//	volume ID    <store>/<volume>              default/pvc-0f6d5c2e-...
//	snapshot ID  <store>/<volume>@<snapshot>   default/pvc-0f6d...@snapshot-9a1b...
//
// <store> names a --store NAME=URL flag of the driver: 1-16 characters of
// [A-Za-z0-9_-]. <volume> and <snapshot> are engine names: 1-128 characters
// of [A-Za-z0-9._-] starting with a letter or digit; "csi.meta" is
// reserved. Nothing else parses, so an ID from a hostile caller cannot name
// a key outside its store or a path outside the node's state and WAL
// directories.
//
// The volume name is derived from the CSI name alone (volumeNameFor): the
// name itself when it is a valid engine name of at most 64 bytes (as
// Kubernetes' pvc-<uuid> is), otherwise a readable prefix and 32 hex
// digits of its SHA-256. A retried CreateVolume therefore finds the volume
// the first attempt made. Snapshot names likewise (at most 46 bytes), so
// IDs stay within 128 bytes.
//
// # StorageClass parameters and secrets
//
// Parameters: store, fsType (ext4, xfs), mkfsOptions, cache, drainInterval,
// durability (node, store), leaseDuration (see params.go);
// "csi.storage.k8s.io/" keys are the sidecars' and ignored; anything else
// is InvalidArgument. mkfsOptions must pass an allow-list per filesystem
// (mkfs.go): options that shape the filesystem only, no host paths
// (ext4 -d, xfs -p and the like are refused, naming the option).
// CreateVolume records durability in the volume's
// manifest; the controller hands fsType, mkfsOptions, cache,
// drainInterval, durability and leaseDuration to the node in the volume
// context, and the node passes the last three to the plugin (clones and
// volumes restored from snapshots get the class of their StorageClass
// that way).
//
// CSI secrets (provisioner, controller-publish, controller-expand,
// snapshotter and node-stage secrets) may carry S3 credentials under
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, the one
// spelling of the mounted Secret, CSI secrets and the environment (the
// older awsAccessKeyID, awsSecretAccessKey and awsSessionToken still work,
// with a deprecation warning in the log). They are written
// to a 0600 file (atomically) and the store URL names it with
// credentials_file=; they never appear on a command line, in a URL or in a
// log line (the gRPC interceptor logs requests with every secret replaced
// by "***"). Calls without secrets use the store URL's own credentials.
//
// # Controller
//
// Volumes and snapshots are the engine's; copy-on-write clones of a
// snapshot or a volume are instant at any size. Besides them the driver
// keeps three kinds of small records in each store, under csi.meta/ (see
// meta.go): which node a volume is published to, which volume owns a CSI
// snapshot name (CSI snapshot names are global, the engine's are per
// volume), and which node plugins exist (for ControllerPublishVolume's
// NotFound on an unknown node, with --node-check=store; in a cluster the
// CSINode objects answer instead).
//
// Publication does not move data: the node that stages a volume opens it
// for writing, which takes ownership in the store (an epoch bumped by a
// compare-and-swap) and fences any node that still had it open.
//
// Capabilities: CREATE_DELETE_VOLUME, CREATE_DELETE_SNAPSHOT,
// CLONE_VOLUME, EXPAND_VOLUME (online), LIST_VOLUMES,
// LIST_VOLUMES_PUBLISHED_NODES, LIST_SNAPSHOTS, GET_CAPACITY,
// PUBLISH_UNPUBLISH_VOLUME, GET_VOLUME, GET_VOLUME_HEALTH,
// SINGLE_NODE_MULTI_WRITER. (CSI 1.13 replaced VOLUME_CONDITION by
// GET_VOLUME_HEALTH and the VolumeHealth messages.) Access modes:
// SINGLE_NODE_WRITER, SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER,
// SINGLE_NODE_READER_ONLY; filesystem (ext4, xfs) and raw block.
//
// # Controller replicas
//
// Every replica of the controller serves Identity and every Controller
// RPC; the driver elects no leader of its own. The sidecars (provisioner,
// attacher, snapshotter, resizer) run with --leader-election and pick the
// replica that acts; they call ControllerGetCapabilities at start-up,
// before their own election, so a replica that refused it would keep its
// sidecars crash-looping.
//
// The controller has no background work that needs a single actor: it
// runs no reconciler, no GC and no timer (the engine collects garbage as
// part of the calls that free data, under the store's compare-and-swap).
// During a sidecar's hand-over two replicas may work on the same object at
// once (the old leader's call still running, the new leader's retry).
// That is safe because the store, not the process, decides every race:
//
//   - CreateVolume: the manifest is created with a conditional put (If-None-
//     Match; the file store's link); the loser gets ErrExists and returns the
//     volume the winner made, or AlreadyExists if it differs. Clones of a
//     volume go through an internal snapshot whose creation is idempotent.
//   - DeleteVolume: the manifest is first marked deleted with a
//     compare-and-swap; the replica that loses that race finds a tombstone
//     and finishes removing it (or finds it gone) instead of failing;
//     removing objects that are already gone is not an error, and a volume
//     found missing is deleted.
//   - CreateSnapshot: the CSI name is claimed in csi.meta/snapshots/ with a
//     conditional put, and the engine's snapshot object likewise; a second
//     call finds the snapshot and returns it.
//   - ControllerPublishVolume: the publication record is a conditional put,
//     so one node wins. ControllerExpandVolume: growing to a size already
//     reached is a no-op.
//
// The per-object in-flight lock (codes.Aborted) works within one replica
// only; across replicas a loser may at worst fail once with a retriable
// code, and the sidecar's retry finds the result. TestControllerReplicas
// runs two replicas on one store.
//
// # Node
//
// NodeStageVolume starts `nbdkit -f --unix <socket> <plugin> volume=...
// wal_dir=<wal-dir>/<store>` for the volume (the store URL in the
// environment), under a keeper shell that records its exit status (nbdkit
// -f asks for SIGTERM when its parent dies; the keeper, not the node
// plugin, is its parent, so a restart of the node plugin does not stop
// it). Once nbdkit serves, the export is attached as a block device
// (pkg/attach) and, for a filesystem volume, formatted if blank and
// mounted at the staging path. NodeUnstageVolume unmounts, detaches and
// stops nbdkit with SIGTERM; the plugin drains the volume to the store as
// it exits, and the node removes its local state and WAL only once the
// store shows the volume closed. Every step of both is idempotent and
// recorded in a state file, so a retry, or a restarted node plugin (the
// healer, healer.go), carries on where things stopped. Processes are run
// by package nbdkit (process.go adapts it): pidfile, keeper status file and
// the per-volume log file are described there.
//
// # Outliving the node plugin
//
// Stopping the node plugin (SIGTERM, SIGINT) stops its gRPC server and
// exits: it stops no nbdkit and unstages, drains or detaches nothing. A
// restarted node plugin adopts the running servers (pidfile, pidfd,
// /proc/PID/cmdline) and attachments. In Kubernetes the node plugin is the
// main process of its container, and the container runtime kills every
// process in the container's cgroup when it exits; so with --server-cgroup
// NAME the node moves every nbdkit keeper (before it starts nbdkit, which
// inherits the cgroup) and every nbdfuse into the cgroup NAME under
// --cgroup-root, outside the container's (package hostcgroup: cgroup v2,
// or every v1 hierarchy). This needs the DaemonSet privileged with hostPID
// and the host's /sys/fs/cgroup mounted into the container (e.g. at
// /host/sys/fs/cgroup, with --cgroup-root pointing there); the node checks
// at start-up that it can create and write the cgroup and exits with an
// error otherwise. Kernel NBD devices need no process of ours, and
// reconnect to a restarted nbdkit.
//
// nbdkit writes its output to a per-volume log file (a file, so that it
// outlives the node plugin). The node re-logs the new lines of every
// server it runs or adopts through klog, with the volume's handle as
// volume_id and nbdkit's level as the severity (so that `kubectl logs`
// shows them, in --logging-format), polling every 500 ms until the server
// exits, and truncates the file once it holds more than 8 MiB (nbdkit
// appends, so truncation is safe).
//
// Each nbdkit also serves its volume's measurements (NBD requests, the
// engine's counters, its store requests) on a metrics socket next to its
// NBD socket (the plugin parameter metrics=; the format is pkg/volmetrics'),
// which the node's collector reads at each scrape (enginemetrics.go;
// docs/metrics.md lists every metric). With a Kubernetes client the node
// posts Events on a volume's claim when its health changes (events.go).
//
// The healer restarts an nbdkit that died (or that a restarted node plugin
// finds gone) only while the volume is still this node's, since an open
// takes ownership unconditionally: the store's current owner (the
// manifest's epoch and nonce) must be the one the engine recorded in the
// WAL's OWNER file here (ownership.go). A volume another node has taken
// over meanwhile stays closed and is reported Fenced by NodeGetVolumeHealth;
// NodeUnstageVolume then tears it down without draining and quarantines the
// stale WAL (kept, never replayed), and a new NodeStageVolume takes
// ownership afresh. While the store cannot be reached, the healer retries.
//
// Node capabilities: STAGE_UNSTAGE_VOLUME, EXPAND_VOLUME, GET_VOLUME_STATS,
// GET_VOLUME_HEALTH, SINGLE_NODE_MULTI_WRITER. Volumes have no topology.
//
// # Errors
//
// errors.go is the one place where engine, store and attacher errors
// become gRPC codes. Mutating RPCs take a per-object in-flight lock; a
// concurrent duplicate gets codes.Aborted.
//
// # Where things are
//
// Every RPC that acts on one volume starts with the same preamble
// (preamble.go): required fields, the capability, the volume ID, the
// in-flight lock, in that order and with the same codes; later errors go
// through toStatus with what the RPC was doing.
//
//	server.go, identity.go        the gRPC server, logging interceptor; Identity
//	controller.go                 ControllerServer, capabilities, NodeChecker
//	controller_create.go          CreateVolume (blank, from a snapshot, from a volume)
//	controller_volumes.go         Delete, Validate, List, Get, health, GetCapacity
//	controller_publish.go         ControllerPublish/Unpublish (csi.meta/publish records)
//	controller_expand.go          ControllerExpandVolume
//	snapshots.go                  Create/Delete/ListSnapshots
//	meta.go                       the driver's records in a store (csi.meta/)
//	node.go                       NodeServer, capabilities, a volume's URL and nbdkit command
//	node_stage.go, node_unstage.go  NodeStage/NodeUnstage and their steps
//	node_publish.go               NodePublish/NodeUnpublish (bind mounts)
//	node_expand_stats.go          NodeExpandVolume, NodeGetVolumeStats
//	health.go                     NodeGetVolumeHealth, per-volume metrics (WAL state from the engine)
//	enginemetrics.go              the engine metrics of each volume, from its plugin's metrics socket
//	events.go                     Kubernetes Events on claims when a volume's health changes
//	servers.go                    the registry of running nbdkit processes; start, adopt, watch, stop
//	plugin.go                     probing nbdkit and the plugin (through the Supervisor when it can)
//	healer.go, ownership.go       re-adopting staged volumes after a restart; whose volume it is
//	nodestate.go                  the node's state files (atomic, crash-tested)
//	stores.go                     the one cache of store handles; credentials files
//	params.go, mkfs.go, ids.go    parameters, the mkfsOptions allow-list, IDs
//	process.go                    the nbdkit Supervisor
package driver

package main

import "flag"

const pluginFile = "nbdkit-viperblock-plugin.so"

var cmdServe = &command{
	name: "serve", args: "NAME --socket PATH", nargs: 1,
	summary: "serve a volume over NBD on a Unix socket (runs nbdkit in the foreground)",
	detail: `Runs 'nbdkit -f --unix PATH nbdkit-viperblock-plugin.so volume=NAME ...' as a child and waits.
Clients connect with nbd+unix:///?socket=PATH (nbdcopy, nbdinfo, qemu, nbdfuse, nbd-client).
SIGINT or SIGTERM stops nbdkit: once connected clients have disconnected (nbdkit lets open
connections finish), the plugin flushes and drains the volume to the store and vblock exits 0. A
second signal kills nbdkit at once: flushed writes stay in the WAL and the next serve replays them. If the drain fails, the data stays in the WAL directory and vblock exits 1; serving the
volume again on this node retries.

Serving takes ownership of the volume. A server that has it open elsewhere (another WAL directory
or node) is asked to release it: it drains, commits and fails its writes from then on. A server
that does not answer (dead, paused, cut off from the store) is taken over once its lease has
expired (1.2 lease durations, 15 s leases by default); its writes since its last commit are then
set aside with its WAL, unless the volume's durability class is store.
The store URL reaches nbdkit through the environment ($VBLOCK_STORE), never its command line.
The plugin is found with --plugin, $VBLOCK_PLUGIN, or next to this binary (../lib or the same
directory).`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.socket, "socket", "", "Unix socket to serve on (required)")
		fs.StringVar(&o.plugin, "plugin", "", "path of "+pluginFile+" (default $"+envPlugin+" or found next to vblock)")
		fs.StringVar(&o.nbdkit, "nbdkit", "nbdkit", "nbdkit binary")
		fs.StringVar(&o.cache, "cache", "", "read cache: blocks, N% of memory, or a size such as 256MiB")
		fs.StringVar(&o.readCache, "read-cache", "", "node-local disk cache of whole chunks under the WAL directory, e.g. 1GiB (0: none; default 1GiB for an s3:// store, none otherwise)")
		fs.StringVar(&o.metrics, "metrics", "", "serve the volume's measurements on this Unix socket (JSON over HTTP, GET /v1/snapshot; see pkg/volmetrics)")
		fs.BoolVar(&o.readonly, "readonly", false, "serve read-only without taking ownership (no WAL needed)")
		fs.StringVar(&o.size, "size", "", "create the volume with this size if it does not exist")
		fs.StringVar(&o.drainInterval, "drain-interval", "", "longest time written data waits before it is drained, e.g. 5s")
		fs.StringVar(&o.durability, "durability", "", "node or store: where a flush is durable (default: the volume's class)")
		fs.StringVar(&o.leaseDuration, "lease-duration", "", "ownership lease, e.g. 15s (the default): another node takes over an unresponsive server after 1.2x")
		fs.StringVar(&o.walDefer, "wal-defer", "", "written data whose WAL write may wait for a flush or a drain, e.g. 64MiB (0: none; default 7/8 of the pending limit)")
		fs.StringVar(&o.compact, "compact", "", "compaction settings, comma-separated: off, bandwidth=SIZE (bytes/s, 0 unlimited), requests=N (per second), ratio=R (stored/live target)")
		fs.IntVar(&o.threads, "threads", 0, "nbdkit worker threads per connection (nbdkit's default if 0)")
		fs.BoolVar(&o.verbose, "v", false, "verbose nbdkit (debug messages)")
	},
	run: runServe,
}

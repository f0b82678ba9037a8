// Package nemesis is a randomized fault test of volume ownership: three
// simulated nodes serve one volume through real nbdkit processes and the
// viperblock plugin over a real S3 server (versitygw), while a seeded
// schedule partitions, pauses, kills and moves them, and clients record
// every request they make. A checker then judges the history against the
// safety invariants below. The package is test-only (this file holds the
// documentation); `make nemesis` runs it (see README.md).
//
// # Design
//
// One versitygw for the whole test, with one fault proxy per node in front
// of it (internal/testutil/faultproxy): node i's store URL points at proxy
// i, so SetPartition cuts that node alone off the store. Each schedule gets
// a fresh 16 MiB volume (`vblock create`) and fresh WAL directories, one
// per node. A node runs at most one nbdkit at a time:
//
//	nbdkit -f --unix SOCK --pidfile F --exit-with-parent plugin.so volume=V
//	    wal_dir=DIR drain_interval=1s [lease_duration=3s] [durability=node|store]
//
// with VBLOCK_STORE (the proxy's URL) and NEMESIS_PLUGIN_ENV in its
// environment. Starting nbdkit on a node other than the owner's is a
// takeover: with leases, its open waits until the owner, asked through the
// store, drains and releases, or until the owner's lease expires; without
// them (today's plugin) it takes over at once and the old owner is fenced at
// its next commit. Launches wait for nbdkit's pidfile for up to a lease plus
// 15 s (the lease: NEMESIS_LEASE when passed to the servers; otherwise 30 s,
// a bound on a plugin's own default lease). lease_duration= and durability= are passed only to a plugin whose
// --help lists them (NEMESIS_LEASES, NEMESIS_DURABILITY override), so the
// same schedules run against a plugin without leases.
//
// Every running server has one client connection (a minimal NBD client,
// one request at a time) driven by its own goroutine: it writes a fresh
// 4 KiB value to a random block among the first 256 (so blocks are
// overwritten often) and FLUSHes, and one time in eight reads a random
// block instead. A value encodes the schedule, a write id unique in the
// schedule, the node, the server incarnation, the block and a CRC32C (see
// value_test.go), so any block read decodes to the exact write that put it
// there, or is zeros, or is detected as torn, foreign or misplaced. Every
// request is recorded with its start (just before it is sent), its end
// (just after its reply arrived) and its outcome.
//
// # Schedule
//
// Schedule K of a run with seed S draws its decisions from a generator
// seeded by (S, K) and logs every event with its time. Every 0.5-2.5 s, for
// 20 s (40 s under NEMESIS_RUNS), it picks one applicable event:
//
//   - partition a node running a server from the store, healed 0.5-3
//     leases later;
//   - pause (SIGSTOP) a server for 1.5-3 leases, then SIGCONT;
//   - kill -9 a server and restart it on the same WAL directory;
//   - clean move: stop the owner's client, SIGTERM the owner (it must drain
//     and exit 0), start a server on another node;
//   - forced takeover: start a server on another node while the owner is
//     alive, paused, partitioned or dead;
//   - node lost for good (durability=store only): kill -9 the owner, delete
//     its WAL directory, start a server on another node;
//   - retire a stale server (SIGTERM; not judged);
//   - when nobody owns the volume, start a server first of all.
//
// Starting on a node that runs a stale server retires it first; servers
// are never started on a partitioned node. Heals and resumes fall due
// while launches and stops are waited for. The schedule then ends: every
// partition is healed, every paused server resumed, a server started if
// none owns the volume; invariant 5 is probed; the stale servers are
// stopped and the owner is stopped cleanly (it must exit 0); `vblock export`
// reads the volume's committed state from the store itself.
//
// The model's owner is the server that opened the volume last. A tenure is
// one node's uninterrupted ownership: its servers on the same WAL directory
// (a kill -9 and restart continues it), ended by a clean stop, a takeover,
// or the node's loss.
//
// # Invariants
//
//  1. No two nodes confirm FLUSHes in overlapping ownership. Checked in two
//     forms. Overlap: each server's confirmed flushes span [first start,
//     last end]; spans of servers on different nodes must be disjoint.
//     Stale: no server confirms a flush that was sent after a newer server
//     on another node had opened the volume. A flush whose reply was held
//     up by a SIGSTOP of its own server (start < stop < end) is taken to
//     end at the stop: the server decided before the pause, and the lease
//     rules require any decision after a pause to be re-validated; flushes
//     started after the resume still catch a server that does not.
//  2. No read, during the run or of the final state, returns anything but
//     zeros or the value of a write issued before the read ended, to that
//     block, in this schedule.
//  3. durability=store: every confirmed FLUSH survives. For each confirmed
//     write W followed by a confirmed flush F on W's own server (the first
//     confirmed flush sent after W completed), the block's final value is W
//     or a write to the block issued after W completed (from any server,
//     confirmed or not: F covers a later write of W's own server too).
//  4. durability=node: the same, except for tenures that ended in a
//     takeover while the owner may have lost its lease: the servers ran
//     without leases, or the owner's last server was dead, paused or
//     partitioned when the new server was launched, or it had been paused
//     or partitioned for a lease or longer. Such a tenure may lose writes,
//     but only a suffix: if a write W of the tenure survives (the block's
//     final value is W), no confirmed write of the tenure that completed
//     before W was issued may be lost, where lost means the block's final
//     value is zeros or a write issued before it. A write of an earlier
//     server of the tenure than W's counts only if a flush of its own
//     server covered it (an unflushed write may die with its process).
//     Writes whose fate cannot be told (a later write holds the block)
//     pass.
//  5. After the faults end, within a lease (as for launches) plus 10 s,
//     exactly one running server can write and flush successfully, twice
//     in a row, while every other running server's write or flush fails.
//
// Also judged: a clean stop of the owner (a move, or the final stop) must
// exit 0.
//
// # Clocks
//
// All times are one monotonic clock in the test process; the servers'
// clocks are never read. Lease expiry is therefore judged only through its
// effects. The overlap form of invariant 1 assumes that a client goroutine
// sees a reply sooner after the server sent it than a takeover completes
// (a new server must serve, be connected to, and be written to before its
// first flush starts): milliseconds against tens of milliseconds at least.
// The stale form has no such assumption. Pause times are taken once every
// thread of the process is stopped (/proc), resumes when SIGCONT was sent.
//
// # Environment
//
//	NEMESIS_RUNS=N              schedules (default 2, each 20 s of faults;
//	                            when set, 20-40 s each)
//	NEMESIS_SEED=S              the run's seed (default: from the clock; printed)
//	NEMESIS_ONLY=K              run only schedule K of seed S
//	NEMESIS_DURATION=D|D1-D2    faults per schedule
//	NEMESIS_LEASE=D             lease duration (default 3s), passed as
//	                            lease_duration= and timing the schedule
//	NEMESIS_LEASES=auto|on|off  pass lease_duration= (auto: if the plugin has it)
//	NEMESIS_DURABILITY=auto|node|store|off
//	                            pass durability= (auto: if the plugin has it,
//	                            each schedule picks node or store); off checks
//	                            node semantics without passing it
//	NEMESIS_DRAIN_INTERVAL=D    the plugin's drain_interval= (default 1s)
//	NEMESIS_EVENTS=a,b,...      event kinds allowed: partition, pause, crash,
//	                            move, takeover, lose, retire (default all)
//	NEMESIS_PLUGIN_ENV="K=V ..." added to every nbdkit's environment, e.g.
//	                            VB_LEASE_CHECKS=off to show a broken build fails
//	NEMESIS_LOGDIR=DIR          keep every nbdkit's log under DIR
//	VB_PLUGIN=path.so           test another plugin build (internal/testutil)
//
// Each schedule prints `nemesis: seed S schedule K: PASS` or `... FAIL
// <reason>`, and the run ends with `nemesis: N passed, N failed`. A failed
// schedule logs every violation, its servers and tenures, and the last
// lines of every nbdkit log. Under -short the test is skipped; without
// nbdkit, versitygw or the plugin's build tools it is skipped through
// internal/testutil, which VB_REQUIRE=all turns into a failure. It needs
// no root.
package nemesis

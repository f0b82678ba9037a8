// Package viperblock is the Viperblock block storage engine: a volume of
// 4 KiB blocks whose writes are acknowledged from memory, made durable on
// Flush by a 16-shard write-ahead log on local disk, and drained into
// immutable 4 MiB chunks in an object store (package backend), committed by
// a manifest written with compare-and-swap.
//
// # Durability contract
//
//  1. WriteAt returns once the data is in memory. Flush returns once every
//     write that completed before it, from any goroutine, is in the WAL and
//     fsynced (and, in the durability class "store", in the store log: see
//     storelog.go), and only while this open holds a valid ownership lease
//     by its own clock (lease.go); otherwise it fails with ErrLeaseExpired
//     or ErrFenced.
//  2. Drain packs the WAL's contents into chunks, uploads them and commits a
//     manifest. The backend always holds the state of one instant: no write
//     that completed after that instant, and every write that completed
//     before it. Every chunk is durable before the manifest that references
//     it is written (a store that batches durability, backend.BatchPutter,
//     syncs the drain's chunks together first).
//  3. Close drains before it returns and releases the lease, so the volume
//     can be opened anywhere, at once, from the backend alone.
//  4. Open replays the WAL left by a crash on this node: nothing flushed is
//     lost. Opened elsewhere (another WAL directory), the volume holds the
//     last committed state plus, whatever the class, the previous owner's
//     store log (everything it confirmed in the class "store").
//  5. A writable Open first takes the volume's lease: at once if it is free,
//     released, or this WAL directory's own; from a live holder by asking it
//     to release (it drains, commits and lets go); from a holder that does
//     not answer only once the lease has expired by the taker's clock. Then
//     it takes ownership by bumping the manifest's epoch with a
//     compare-and-swap; a stale owner's next commit fails and the volume
//     stops accepting writes (ErrFenced). Only another owner fences: a
//     failed commit is judged by the manifest read back, never by the
//     error alone (see "Commits with an unknown outcome" below). A
//     resume-only Open (Options.ResumeOnly) takes ownership only back from
//     its own WAL directory, whose OWNER file must own the manifest it
//     read; a takeover before or during it fails it with ErrNotOwner, and
//     nothing is written.
//  6. Every record and object carries a CRC32C and a format version. A torn
//     WAL tail is discarded; corruption elsewhere is an error (ErrCorrupt),
//     never data.
//
// # Trims
//
// Trim and Zero log a trim as one WAL record (a first block and a count)
// per shard it touches. Until a drain commits it, the trim is held in memory
// as ranges (trim.go, package rangeset) that reads consult between the block
// store and the map; the drain applies it to the map, and from then on it is
// the absence of the blocks from the manifest's extents: no format records
// committed trims.
//
// # Commits with an unknown outcome
//
// A manifest commit (PutIf with the version last committed) can fail after
// the store applied it: its answer is lost on the store's last attempt, the
// caller's deadline passes, a request held up in the network applies after
// the PutIf gave up, or the S3 store reports a precondition failure for its
// own write. The next commit would then lose its compare-and-swap against a
// manifest this owner wrote itself. So after any failed commit, and before
// fencing, the engine reads the manifest back and compares whole encodings
// (each carries its commit time and sequence high-water mark, so no two
// commits encode alike):
//
//   - exactly the manifest it tried to commit: the commit applied; it is
//     adopted (with its current version) and the drain finishes: the map is
//     published, drained block-store entries dropped, WAL segments retired;
//   - exactly the last committed manifest: the commit did not apply; it is
//     retried against the current version (after a precondition failure),
//     or the drain fails and is retried later (the outcome was unknown:
//     the attempt is kept in doubt, as it may still apply);
//   - exactly an earlier attempt kept in doubt: that one applied; it becomes
//     the committed state and the drain is built again on top of it;
//   - another owner's epoch or nonce, no manifest, or a state with our epoch
//     and nonce that this owner never wrote: the volume is fenced;
//   - unreadable: the drain fails, the attempt stays in doubt, and the next
//     commit resolves it.
//
// Only a commit known to have applied lets the drain's post-commit steps run.
// On a store that batches durability (the file store) an adopted manifest
// is synced first, since the failure may have been its directory fsync.
//
// # Layout in the backend
//
//	<volume>/manifest            the committed state (package manifest)
//	<volume>/chunks/<id:016x>    immutable chunks (package chunk)
//	<volume>/lease               the ownership lease (lease.go)
//	<volume>/release             a request to the lease holder to release (lease.go)
//	<volume>/request             a request to the owner to drain or grow (request.go)
//	<volume>/handoff             a standby open waiting to take the volume over (handoff.go)
//	<volume>/wal/<epoch:016x>-<nonce>/<counter:016x>  the store log (storelog.go)
//	<volume>/snapshots/<name>    a snapshot: a frozen manifest (snapshot.go)
//	<volume>/deps/<snapshot>/<clone>  a clone's dependency on a snapshot (snapshot.go)
//	<volume>/manifest.broken-<unix ns>  a damaged manifest, kept by Rebuild (rebuild.go)
//
// Every volume is a top-level name, so the volumes of a store are listed
// with one listing of the top level (backend.ListDirs), never of their
// chunks (list.go); hot paths read the manifest alone (Stat).
//
// Chunk ids are (epoch << 40 | counter), so two owners never write the same
// key, and a retry after a failed upload never overwrites a committed chunk.
//
// # Layout of the WAL directory
//
//	<wal dir>/<volume>/.lock                 held while the volume is open
//	<wal dir>/<volume>/OWNER                 whose WAL this is (see owner.go)
//	<wal dir>/<volume>/RESERVE               64 KiB kept so OWNER stays writable on a full disk
//	<wal dir>/<volume>/stale-<unix ns>/      a superseded WAL set aside; removed after Options.StaleRetention
//	<wal dir>/<volume>/<shard:02d>/<generation:016x>.wal   segments (package wal)
//	<wal dir>/<volume>/<shard:02d>/<generation:016x>.free  retired segment files kept for reuse (log.go)
package viperblock

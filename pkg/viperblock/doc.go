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
//     fsynced.
//  2. Drain packs the WAL's contents into chunks, uploads them and commits a
//     manifest. The backend always holds the state of one instant: no write
//     that completed after that instant, and every write that completed
//     before it. Every chunk is durable before the manifest that references
//     it is written (a store that batches durability, backend.BatchPutter,
//     syncs the drain's chunks together first).
//  3. Close drains before it returns, so the volume can be opened anywhere
//     from the backend alone.
//  4. Open replays the WAL left by a crash on this node: nothing flushed is
//     lost. Opened elsewhere (another WAL directory), the volume holds the
//     last committed state.
//  5. A writable Open takes ownership by bumping the manifest's epoch with a
//     compare-and-swap; a stale owner's next commit fails and the volume
//     stops accepting writes (ErrFenced).
//  6. Every record and object carries a CRC32C and a format version. A torn
//     WAL tail is discarded; corruption elsewhere is an error (ErrCorrupt),
//     never data.
//
// # Layout in the backend
//
//	<volume>/manifest            the committed state (package manifest)
//	<volume>/chunks/<id:016x>    immutable chunks (package chunk)
//
// Chunk ids are (epoch << 40 | counter), so two owners never write the same
// key, and a retry after a failed upload never overwrites a committed chunk.
//
// # Layout of the WAL directory
//
//	<wal dir>/<volume>/.lock                 held while the volume is open
//	<wal dir>/<volume>/OWNER                 whose WAL this is (see owner.go)
//	<wal dir>/<volume>/<shard:02d>/<generation:016x>.wal   segments (package wal)
package viperblock

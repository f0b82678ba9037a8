/* The C side of the viperblock nbdkit plugin: the struct nbdkit_plugin,
 * plugin_init (via NBDKIT_REGISTER_PLUGIN) and thin wrappers that call the
 * //export'ed Go functions in export.go.
 *
 * Handles: open returns a runtime/cgo.Handle (an integer) cast to void *;
 * C never holds a Go pointer. Errors: the Go side calls vb_error, which
 * records the message and the errno (nbdkit_set_error) inside this C call,
 * so nothing depends on errno surviving the trip through Go. */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "shim.h"
#include "_cgo_export.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* Keep in step with Config.Set in internal/vbplugin/config.go. */
#define VB_CONFIG_HELP \
  "volume=<NAME>      (required) the volume to serve; also the magic parameter\n" \
  "store=<URL>        object store: file:///abs/dir, mem://name, s3://...\n" \
  "                   (default $VBLOCK_STORE; pass URLs with credentials that way)\n" \
  "wal_dir=<DIR>      node-local WAL directory (default $VBLOCK_WAL_DIR);\n" \
  "                   required unless readonly=true\n" \
  "cache=<N|N%|SIZE>  read cache: N 4 KiB blocks, N% of memory, or a size (256MiB)\n" \
  "size=<SIZE>        create the volume with this size if it is missing (10GiB)\n" \
  "encryption_key_file=<FILE> key-encryption key of an encrypted volume: 32\n" \
  "                   bytes, raw or base64 (default $VBLOCK_ENCRYPTION_KEY_FILE);\n" \
  "                   a missing or wrong key fails the open and changes nothing;\n" \
  "                   with size= a missing volume is created encrypted\n" \
  "readonly=<BOOL>    serve without taking ownership; writes fail (default false)\n" \
  "resume_only=<BOOL> take ownership only back from this wal_dir's own earlier\n" \
  "                   open (a restart after a crash); if another owner has the\n" \
  "                   volume, exit with status 77 and change nothing (default false)\n" \
  "standby=<BOOL>     live migration target: the volume's owner keeps it and\n" \
  "                   this server waits; the first I/O request (read, write,\n" \
  "                   flush, ...) asks the owner to drain and hand it over and\n" \
  "                   waits for that (default false)\n" \
  "handoff_timeout=<D> how long that handoff waits for a live owner; past it\n" \
  "                   the request fails with EIO and the owner keeps the volume\n" \
  "                   (default 10s; a dead owner is waited for until its lease\n" \
  "                   expires)\n" \
  "drain_interval=<D> longest wait before written data is drained (default 5s)\n" \
  "lease_duration=<D> ownership lease (default 15s): a flush is confirmed only\n" \
  "                   while it is valid; another node takes over an owner that\n" \
  "                   neither renews nor releases it after 1.2 durations\n" \
  "durability=<node|store> node: a flush is durable in the WAL on this node;\n" \
  "                   store: also in the object store (default: the volume's class)\n" \
  "virtual_size=<SIZE> advertise at least SIZE bytes, so an attached device can\n" \
  "                   grow with the volume; past the volume's end reads are zeros\n" \
  "memory=<SIZE>      this server's memory share: pending writes, caches and\n" \
  "                   buffers are sized to fit it (at least 64MiB and nbdkit's\n" \
  "                   request buffers), an explicit cache= beyond it is capped;\n" \
  "                   writers wait at the pending limit\n" \
  "max_request=<SIZE> the largest read or write request advertised (default\n" \
  "                   32MiB, with memory= 1MiB); every nbdkit thread keeps a\n" \
  "                   buffer as large as the largest request it has served\n" \
  "connections=<N>    connections memory= budgets request buffers for (default 1)\n" \
  "pending_limit=<SIZE> pending writes before writers wait (default 512MiB)\n" \
  "slab_pool=<SIZE>   retired WAL buffers kept for reuse (default: the pending\n" \
  "                   limit and a quarter; 0: none)\n" \
  "wal_defer=<SIZE>   written data whose WAL write waits for a flush or a drain\n" \
  "                   (default: half the pending limit, 256MiB; 0: none)\n" \
  "metrics=<PATH>     serve the volume's measurements on a Unix socket at PATH\n" \
  "                   (HTTP, versioned JSON: see package volmetrics)\n" \
  "compact=<BOOL>     background compaction of sparse chunks (default true)\n" \
  "compact_bandwidth=<SIZE> compaction's budget in bytes read+written per second\n" \
  "                   (default 256MiB; 0: unlimited)\n" \
  "compact_requests=<N> compaction's budget in store requests per second\n" \
  "                   (default 100; 0: unlimited)\n" \
  "compact_ratio=<R>  compact while the store holds more than R times the live\n" \
  "                   data (default 1.15, at least 1)\n" \
  "Run nbdkit in the foreground (-f): the Go runtime does not survive its fork."

/* The pid that ran get_ready; a different pid in after_fork means nbdkit
 * daemonised, and the Go runtime does not survive fork. */
static pid_t ready_pid;
/* Set when closing the volume at cleanup failed: nbdkit then exits non-zero
 * so a supervisor knows the drain did not complete. */
static int cleanup_failed;

void
vb_error (int err, const char *msg)
{
  nbdkit_error ("%s", msg);
  if (err)
    nbdkit_set_error (err);
}

void
vb_debug (const char *msg)
{
  nbdkit_debug ("%s", msg);
}

void
vb_log (const char *level, const char *msg)
{
  fprintf (stderr, "nbdkit: viperblock: %s: %s\n", level, msg);
  fflush (stderr);
}

void
vb_print (const char *msg)
{
  fputs (msg, stdout);
  fflush (stdout);
}

int
vb_add_extent (struct nbdkit_extents *e, uint64_t off, uint64_t len, uint32_t type)
{
  if (nbdkit_add_extent (e, off, len, type) == -1) {
    nbdkit_set_error (errno);
    return -1;
  }
  return 0;
}

void
vb_shutdown (void)
{
  nbdkit_shutdown ();
}

/* The build's version (internal/version), for nbdkit --dump-plugin. */
static char vb_version[128] = "dev";
static void
w_load (void)
{
  /* nbdkit's worker threads keep a request buffer each, and free it when
   * their connection closes. A fixed mmap threshold (glibc's default
   * value, but fixed: a freed mapping no longer raises it) keeps every
   * buffer above it a mapping of its own, returned to the system when
   * freed, rather than a chunk of a malloc arena that may stay resident. */
  mallopt (M_MMAP_THRESHOLD, 128 * 1024);
  goLoad ();
  goVersion (vb_version, sizeof vb_version);
}
static void w_unload (void)
{
  if (cleanup_failed) {
    fflush (stderr);
    _exit (EXIT_FAILURE);
  }
}
static int w_config (const char *k, const char *v) { return goConfig ((char *) k, (char *) v); }
static int w_config_complete (void) { return goConfigComplete (); }
static void w_dump_plugin (void) { goDumpPlugin (); }

static int
w_get_ready (void)
{
  int r;

  ready_pid = getpid ();
  r = goGetReady ();
  if (r > 0) {
    /* A resume_only=true open refused because another owner has the
     * volume: exit with the status the supervisor recognises
     * (vbplugin.ExitNotOwner) rather than nbdkit's generic 1. Nothing is
     * served yet: no socket, no pidfile. */
    fflush (stderr);
    _exit (r);
  }
  return r;
}

static int
w_after_fork (void)
{
  if (getpid () != ready_pid) {
    /* Do not call into Go here: its threads did not survive the fork. */
    nbdkit_error ("viperblock: nbdkit forked into the background; "
                  "this plugin needs nbdkit -f (foreground)");
    return -1;
  }
  /* Background goroutines start only now: between get_ready and here
   * nbdkit closes stdin/stdout and expects open() to hand it fds 0 and 1
   * back, so no other thread may open a file in that window. */
  goAfterFork ();
  return 0;
}

static void
w_cleanup (void)
{
  if (goCleanup () == -1)
    cleanup_failed = 1;
}

static void *
w_open (int readonly)
{
  uintptr_t h = goOpen (readonly);
  return h ? (void *) h : NULL;
}

#define H(h) ((uintptr_t) (h))
static void w_close (void *h) { goClose (H (h)); }
static int64_t w_get_size (void *h) { return goGetSize (H (h)); }
static int w_can_write (void *h) { return goCanWrite (H (h)); }
static int w_one (void *h) { return 1; }
static int w_zero_ (void *h) { return 0; }
static int w_can_fua (void *h) { return NBDKIT_FUA_NATIVE; }
static int w_can_cache (void *h) { return NBDKIT_CACHE_NATIVE; }
static int
w_block_size (void *h, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  return goBlockSize (H (h), minimum, preferred, maximum);
}
static int
w_pread (void *h, void *buf, uint32_t n, uint64_t off, uint32_t fl)
{
  return goPread (H (h), buf, n, off, fl);
}
static int
w_pwrite (void *h, const void *buf, uint32_t n, uint64_t off, uint32_t fl)
{
  return goPwrite (H (h), (void *) buf, n, off, fl);
}
static int w_flush (void *h, uint32_t fl) { return goFlush (H (h), fl); }
static int
w_trim (void *h, uint32_t n, uint64_t off, uint32_t fl)
{
  return goTrim (H (h), n, off, fl);
}
static int
w_zero (void *h, uint32_t n, uint64_t off, uint32_t fl)
{
  return goZero (H (h), n, off, fl);
}
static int
w_extents (void *h, uint32_t n, uint64_t off, uint32_t fl, struct nbdkit_extents *e)
{
  return goExtents (H (h), n, off, fl, e);
}
static int
w_cache (void *h, uint32_t n, uint64_t off, uint32_t fl)
{
  return goCache (H (h), n, off, fl);
}

static struct nbdkit_plugin plugin = {
  .name = "viperblock",
  .longname = "Viperblock: block volumes in object storage",
  .version = vb_version,
  .description = "Serves a Viperblock volume (write-ahead log on local disk, data in an object store).",
  .load = w_load,
  .unload = w_unload,
  .config = w_config,
  .config_complete = w_config_complete,
  .config_help = VB_CONFIG_HELP,
  .magic_config_key = "volume",
  .dump_plugin = w_dump_plugin,
  .get_ready = w_get_ready,
  .after_fork = w_after_fork,
  .cleanup = w_cleanup,
  .open = w_open,
  .close = w_close,
  .get_size = w_get_size,
  .block_size = w_block_size,
  .can_write = w_can_write,
  .can_flush = w_one,
  .is_rotational = w_zero_,
  .can_trim = w_one,
  .can_zero = w_one,
  .can_fast_zero = w_one,
  .can_fua = w_can_fua,
  .can_multi_conn = w_one,
  .can_extents = w_one,
  .can_cache = w_can_cache,
  .pread = w_pread,
  .pwrite = w_pwrite,
  .flush = w_flush,
  .trim = w_trim,
  .zero = w_zero,
  .extents = w_extents,
  .cache = w_cache,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)

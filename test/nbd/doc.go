// Package nbd holds the NBD integration tests: real nbdkit serving volumes
// through the viperblock plugin (lib/nbdkit-viperblock-plugin.so, built by
// `make build`), exercised with nbdinfo, nbdcopy, qemu-io, a small NBD
// client of our own (for multi-connection and crash tests), and real
// filesystems through nbdfuse, a loop device, mkfs.ext4/mkfs.xfs and mount.
//
// The tests need nbdkit and libnbd's tools; the filesystem tests also need
// root, /dev/fuse and loop devices, and skip (saying why) without them.
// VB_NBD_CRASH_ITERS sets the number of kill -9 crash iterations (default 20).
package nbd

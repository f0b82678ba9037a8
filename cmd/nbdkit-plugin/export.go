// Command nbdkit-plugin is the Viperblock nbdkit plugin, built with
//
//	go build -buildmode=c-shared -o lib/nbdkit-viperblock-plugin.so ./cmd/nbdkit-plugin
//
// and run as
//
//	nbdkit -f --unix /run/vol.sock lib/nbdkit-viperblock-plugin.so volume=NAME store=URL wal_dir=DIR
//
// This package is the project's only cgo, in three files: shim.c (the struct
// nbdkit_plugin and C wrappers), export.go (thin //export functions that
// convert types and return -1 with an errno) and log.go (logging into
// nbdkit). The logic lives in internal/vbplugin, which has no cgo.
package main

// The nbdkit_* functions the shim calls are defined by the nbdkit binary
// that loads the plugin, so nothing defines them at link time. A
// c-shared link allows that; the plain executable link that `go build ./...`
// and `go vet` do must be told to, or it stops at "undefined reference".
// That executable is never run: main is empty and only satisfies package
// main, which -buildmode=c-shared requires.

/*
#cgo CFLAGS: -O2 -Wall
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-in-object-files
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/cgo"
	"strings"
	"syscall"
	"unsafe"

	"github.com/viperblock/viperblock-csi/cmd/nbdkit-plugin/internal/vbplugin"
	"github.com/viperblock/viperblock-csi/internal/version"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// plugin is the one instance of this nbdkit process: nbdkit's config
// callbacks carry no handle, so the configuration has to live here.
// Connections get their own handles (runtime/cgo.Handle).
var plugin *vbplugin.Plugin

func main() {}

//export goLoad
func goLoad() {
	plugin = vbplugin.New(newLogger())
}

//export goVersion
func goVersion(buf *C.char, n C.size_t) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n))
	copy(b[:len(b)-1], version.String())
	b[min(len(version.String()), len(b)-1)] = 0
}

//export goConfig
func goConfig(k, v *C.char) C.int {
	if err := plugin.Cfg.Set(C.GoString(k), C.GoString(v)); err != nil {
		return fail(0, err)
	}
	return 0
}

//export goConfigComplete
func goConfigComplete() C.int {
	argv, _ := readCmdline()
	if err := vbplugin.CheckForeground(argv, os.Getpid(), os.Getenv); err != nil {
		return fail(0, err)
	}
	if vbplugin.ReadOnlyServer(argv) {
		// nbdkit -r: no client can write, so do not take ownership.
		plugin.Cfg.ReadOnly = true
	}
	plugin.Cfg.Threads = vbplugin.ServerThreads(argv)
	if err := plugin.Cfg.Complete(os.Getenv); err != nil {
		return fail(0, err)
	}
	return 0
}

//export goDumpPlugin
func goDumpPlugin() {
	print_(fmt.Sprintf("viperblock_stores=%s\nviperblock_block_size=%d\n", strings.Join(backend.Schemes(), ","), vbplugin.PreferredBlockSize))
}

//export goGetReady
func goGetReady() C.int {
	if err := plugin.GetReady(context.Background()); err != nil {
		fail(0, err)
		if errors.Is(err, vb.ErrNotOwner) {
			return C.int(vbplugin.ExitNotOwner) // w_get_ready exits with it
		}
		return -1
	}
	return 0
}

//export goAfterFork
func goAfterFork() {
	plugin.AfterFork()
}

//export goCleanup
func goCleanup() C.int {
	if err := plugin.Cleanup(); err != nil {
		return fail(0, err)
	}
	return 0
}

//export goOpen
func goOpen(readonly C.int) C.uintptr_t {
	c, err := plugin.Open(readonly != 0)
	if err != nil {
		fail(syscall.EIO, err)
		return 0
	}
	return C.uintptr_t(cgo.NewHandle(c))
}

func conn(h C.uintptr_t) *vbplugin.Conn { return cgo.Handle(h).Value().(*vbplugin.Conn) }

//export goClose
func goClose(h C.uintptr_t) {
	conn(h).Close()
	cgo.Handle(h).Delete()
}

//export goGetSize
func goGetSize(h C.uintptr_t) C.int64_t { return C.int64_t(conn(h).Size()) }

//export goCanWrite
func goCanWrite(h C.uintptr_t) C.int {
	if conn(h).CanWrite() {
		return 1
	}
	return 0
}

//export goBlockSize
func goBlockSize(h C.uintptr_t, minimum, preferred, maximum *C.uint32_t) C.int {
	*minimum = vbplugin.MinBlockSize
	*preferred = vbplugin.PreferredBlockSize
	*maximum = C.uint32_t(conn(h).MaxRequest())
	return 0
}

// cbytes views C memory of n bytes as a slice, valid during the call only.
func cbytes(p unsafe.Pointer, n C.uint32_t) []byte { return unsafe.Slice((*byte)(p), int(n)) }

//export goPread
func goPread(h C.uintptr_t, buf unsafe.Pointer, n C.uint32_t, off C.uint64_t, fl C.uint32_t) C.int {
	return ioResult(conn(h).Pread(cbytes(buf, n), uint64(off)), false)
}

//export goPwrite
func goPwrite(h C.uintptr_t, buf unsafe.Pointer, n C.uint32_t, off C.uint64_t, fl C.uint32_t) C.int {
	return ioResult(conn(h).Pwrite(cbytes(buf, n), uint64(off), fl&C.NBDKIT_FLAG_FUA != 0), true)
}

//export goFlush
func goFlush(h C.uintptr_t, fl C.uint32_t) C.int {
	return ioResult(conn(h).Flush(), true)
}

//export goTrim
func goTrim(h C.uintptr_t, n C.uint32_t, off C.uint64_t, fl C.uint32_t) C.int {
	return ioResult(conn(h).Trim(uint32(n), uint64(off), fl&C.NBDKIT_FLAG_FUA != 0), true)
}

//export goZero
func goZero(h C.uintptr_t, n C.uint32_t, off C.uint64_t, fl C.uint32_t) C.int {
	// MAY_TRIM and FAST_ZERO need nothing: zeroing is always a fast,
	// metadata-only operation (see Conn.Zero).
	return ioResult(conn(h).Zero(uint32(n), uint64(off), fl&C.NBDKIT_FLAG_FUA != 0), true)
}

//export goExtents
func goExtents(h C.uintptr_t, n C.uint32_t, off C.uint64_t, fl C.uint32_t, e *C.struct_nbdkit_extents) C.int {
	err := conn(h).Extents(uint32(n), uint64(off), fl&C.NBDKIT_FLAG_REQ_ONE != 0, func(o, l uint64, hole bool) error {
		var typ C.uint32_t
		if hole {
			typ = C.NBDKIT_EXTENT_HOLE | C.NBDKIT_EXTENT_ZERO
		}
		if C.vb_add_extent(e, C.uint64_t(o), C.uint64_t(l), typ) == -1 {
			return errAddExtent
		}
		return nil
	})
	if err == errAddExtent {
		return -1 // nbdkit_add_extent reported it and vb_add_extent set errno
	}
	return ioResult(err, false)
}

//export goCache
func goCache(h C.uintptr_t, n C.uint32_t, off C.uint64_t, fl C.uint32_t) C.int {
	return ioResult(conn(h).Cache(uint32(n), uint64(off)), false)
}

var errAddExtent = fmt.Errorf("nbdkit_add_extent failed")

func ioResult(err error, write bool) C.int {
	if err == nil {
		return 0
	}
	return fail(vbplugin.Errno(err, write), err)
}

// fail reports err to nbdkit with errno en (0: leave nbdkit's default) and
// returns -1.
func fail(en syscall.Errno, err error) C.int {
	text := err.Error()
	if !strings.HasPrefix(text, "viperblock") {
		text = "viperblock: " + text
	}
	msg := C.CString(text)
	C.vb_error(C.int(en), msg)
	C.free(unsafe.Pointer(msg))
	return -1
}

// readCmdline returns this process's argv.
func readCmdline() ([]string, error) {
	b, err := os.ReadFile("/proc/self/cmdline")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

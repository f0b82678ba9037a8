package main

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"unsafe"
)

// nbdkitHandler sends the engine's logs to nbdkit: Debug through
// nbdkit_debug (shown with nbdkit -v), Info and Warn as plain lines on
// stderr, Error through nbdkit_error.
type nbdkitHandler struct {
	attrs []slog.Attr
	group string
}

func newLogger() *slog.Logger { return slog.New(&nbdkitHandler{}) }

func (h *nbdkitHandler) Enabled(context.Context, slog.Level) bool { return true }

var lineBufs = sync.Pool{New: func() any { return new(strings.Builder) }}

func (h *nbdkitHandler) Handle(_ context.Context, r slog.Record) error {
	b := lineBufs.Get().(*strings.Builder)
	defer func() { b.Reset(); lineBufs.Put(b) }()
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		if a.Equal(slog.Attr{}) {
			return true
		}
		b.WriteByte(' ')
		if h.group != "" {
			b.WriteString(h.group)
			b.WriteByte('.')
		}
		b.WriteString(a.Key)
		b.WriteByte('=')
		v := a.Value.Resolve().String()
		if strings.ContainsAny(v, " \t\n\"=") || v == "" {
			v = quote(v)
		}
		b.WriteString(v)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	msg := C.CString(b.String())
	defer C.free(unsafe.Pointer(msg))
	switch {
	case r.Level < slog.LevelInfo:
		C.vb_debug(msg)
	case r.Level < slog.LevelWarn:
		lvl := C.CString("info")
		C.vb_log(lvl, msg)
		C.free(unsafe.Pointer(lvl))
	case r.Level < slog.LevelError:
		lvl := C.CString("warning")
		C.vb_log(lvl, msg)
		C.free(unsafe.Pointer(lvl))
	default:
		C.vb_error(0, msg)
	}
	return nil
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func (h *nbdkitHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &nbdkitHandler{group: h.group}
	n.attrs = append(append(n.attrs, h.attrs...), as...)
	return n
}

func (h *nbdkitHandler) WithGroup(name string) slog.Handler {
	n := &nbdkitHandler{attrs: h.attrs, group: name}
	if h.group != "" {
		n.group = h.group + "." + name
	}
	return n
}

// print_ writes to nbdkit's stdout (used by --dump-plugin).
func print_(s string) {
	cs := C.CString(s)
	C.vb_print(cs)
	C.free(unsafe.Pointer(cs))
}

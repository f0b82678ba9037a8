package nbdkit

import (
	"bytes"
	"io"
	"os"
	"sync"
	"time"
)

// FollowOptions configure Follow.
type FollowOptions struct {
	// Prefix starts every forwarded line, e.g. "nbdkit vol-1: ".
	Prefix string
	// Interval is how often the file is polled (default 500 ms).
	Interval time.Duration
	// Limit bounds the file: when it holds more than Limit bytes after a
	// pass, it is truncated to nothing (0: never). nbdkit writes it with
	// O_APPEND, so its next line lands at the new end. Lines written
	// between the pass's read and the truncation are lost (a window of a
	// few microseconds per truncation).
	Limit int64
	// Earlier forwards up to this many lines from before the starting
	// offset first, marked "(earlier) ": context for a server adopted
	// after a restart.
	Earlier int
}

// Follow forwards the lines appended to the log file at path, from offset
// from (negative: its current end), to w, each prefixed with o.Prefix, until
// done is closed; then it forwards what is left (a last partial line ends
// with a newline) and returns. Each line is one Write to w. It polls: a
// missing or unreadable file is retried at the next poll; a file found
// shorter than the offset (truncated by someone else) is read from its
// start.
func Follow(path string, from int64, done <-chan struct{}, w io.Writer, o FollowOptions) {
	if o.Interval <= 0 {
		o.Interval = 500 * time.Millisecond
	}
	f := &follower{path: path, off: from, w: w, o: o}
	if from < 0 {
		if fi, err := os.Stat(path); err == nil {
			f.off = fi.Size()
		} else {
			f.off = 0
		}
	}
	if o.Earlier > 0 {
		f.earlier()
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			f.pass()
			if len(f.partial) > 0 {
				f.emit(f.partial)
				f.partial = nil
			}
			return
		case <-t.C:
			f.pass()
		}
	}
}

// maxLine bounds a forwarded line: a longer one is forwarded in pieces.
const maxLine = 64 << 10

type follower struct {
	path    string
	off     int64
	partial []byte // an incomplete last line, waiting for its end
	w       io.Writer
	o       FollowOptions
	buf     []byte
}

// earlier forwards the last o.Earlier lines before the offset.
func (f *follower) earlier() {
	fl, err := os.Open(f.path)
	if err != nil {
		return
	}
	defer fl.Close()
	start := max(f.off-64<<10, 0)
	b := make([]byte, f.off-start)
	n, _ := fl.ReadAt(b, start)
	b = b[:n]
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1] // complete lines only: the rest is forwarded as new
		f.off = start + int64(i+1)
	} else {
		return
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	if start > 0 && len(lines) > 0 {
		lines = lines[1:] // probably cut
	}
	if len(lines) > f.o.Earlier {
		lines = lines[len(lines)-f.o.Earlier:]
	}
	for _, l := range lines {
		f.emit(append([]byte("(earlier) "), l...))
	}
}

// pass forwards what was appended since the last pass, then truncates the
// file if it is over the limit.
func (f *follower) pass() {
	fl, err := os.OpenFile(f.path, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer fl.Close()
	fi, err := fl.Stat()
	if err != nil {
		return
	}
	if fi.Size() < f.off {
		f.off = 0
	}
	if f.buf == nil {
		f.buf = make([]byte, 64<<10)
	}
	for {
		n, err := fl.ReadAt(f.buf, f.off)
		f.off += int64(n)
		data := f.buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				f.partial = append(f.partial, data...)
				if len(f.partial) >= maxLine {
					f.emit(f.partial)
					f.partial = nil
				}
				break
			}
			line := data[:i+1]
			if len(f.partial) > 0 {
				line = append(f.partial, line...)
				f.partial = nil
			}
			f.emit(line)
			data = data[i+1:]
		}
		if err != nil || n == 0 {
			break
		}
	}
	if f.o.Limit > 0 && f.off > f.o.Limit {
		if err := fl.Truncate(0); err == nil {
			f.off = 0
		}
	}
}

// emit writes one line (ending in a newline, added if missing).
func (f *follower) emit(line []byte) {
	out := make([]byte, 0, len(f.o.Prefix)+len(line)+1)
	out = append(out, f.o.Prefix...)
	out = append(out, line...)
	if out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	f.w.Write(out)
}

// LineWriter serialises the Writes of several followers sharing one
// writer (e.g. os.Stderr), so their lines do not interleave.
type LineWriter struct {
	mu sync.Mutex // guards W
	W  io.Writer
}

func (l *LineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.W.Write(p)
}

// FollowLog forwards the server's log file (Follow) until nbdkit has
// exited: from where this run's output starts for a started server, from
// the current end for an adopted one (with the earlier lines o.Earlier
// asks for). It returns at once if the server has no log file.
func (s *Server) FollowLog(w io.Writer, o FollowOptions) {
	if s.cfg.LogFile == "" {
		return
	}
	from := s.logStart
	if !s.adopted {
		o.Earlier = 0
	}
	Follow(s.cfg.LogFile, from, s.done, w, o)
}

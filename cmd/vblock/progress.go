package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/term"

	"github.com/viperblock/viperblock-csi/pkg/units"
)

// progress draws a one-line progress bar on stderr when it is a terminal
// (or when asked to); otherwise it does nothing.
type progress struct {
	e           *env
	label       string
	total       int64
	on          bool
	start, last time.Time
}

func newProgress(e *env, mode, label string, total int64) *progress {
	on := mode == "always"
	if mode == "auto" {
		f, ok := e.stderr.(*os.File)
		on = ok && term.IsTerminal(int(f.Fd()))
	}
	now := time.Now()
	return &progress{e: e, label: label, total: total, on: on && total > 0, start: now}
}

func (p *progress) set(n int64) {
	if !p.on || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.draw(n)
}

func (p *progress) draw(n int64) {
	const width = 30
	frac := float64(n) / float64(p.total)
	frac = max(0, min(frac, 1))
	fill := int(frac * width)
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = ' '
		if i < fill {
			bar[i] = '='
		}
	}
	rate := float64(n) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.e.stderr, "\r%s [%s] %3.0f%% %s / %s  %s/s   ", p.label, bar, 100*frac,
		units.Format(n), units.Format(p.total), units.Format(int64(rate)))
}

func (p *progress) done() {
	if !p.on {
		return
	}
	p.draw(p.total)
	fmt.Fprintln(p.e.stderr)
}

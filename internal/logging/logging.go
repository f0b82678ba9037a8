// Package logging sets up the binaries' logs: klog, in text (klog's own
// format) or JSON (one object per line, as Kubernetes components offer
// with --logging-format=json), and the engine's log/slog logs through it.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// Formats are the values of --logging-format.
var Formats = []string{"text", "json"}

// AddFlags adds --logging-format to fs; pass its value to Setup after
// parsing.
func AddFlags(fs *flag.FlagSet) *string {
	return fs.String("logging-format", "text", "log format: text (klog's) or json (one JSON object per line: time, level, msg, and the line's key-value pairs)")
}

// Setup applies the format (klog's flags, such as -v, keep working) and
// sends log/slog's default logger, which the engine uses, through klog.
func Setup(format string) error {
	return setup(format, os.Stderr)
}

func setup(format string, w io.Writer) error {
	switch format {
	case "", "text":
	case "json":
		// klog decides verbosity (-v) before it calls the logger, so the
		// handler lets every level through; klog's V(n) is slog level -n.
		h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.Level(-128)})
		klog.SetLogger(logr.FromSlogHandler(h))
	default:
		return fmt.Errorf("--logging-format=%s: want text or json", format)
	}
	slog.SetDefault(slog.New(logr.ToSlogHandler(klog.Background())))
	return nil
}

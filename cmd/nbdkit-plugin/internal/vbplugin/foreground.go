package vbplugin

import (
	"errors"
	"strconv"
	"strings"
)

// ErrNotForeground says nbdkit was started without -f.
var ErrNotForeground = errors.New("nbdkit must run in the foreground: add -f " +
	"(the Go runtime inside this plugin does not survive nbdkit's daemonising fork; the server would hang)")

// nbdkit 1.32 options that take an argument, short and long.
var (
	shortWithArg = "DegiPptUu"
	longWithArg  = map[string]bool{
		"debug": true, "export": true, "export-name": true, "exportname": true, "filter": true,
		"group": true, "ipaddr": true, "log": true, "mask-handshake": true, "pidfile": true,
		"port": true, "run": true, "selinux-label": true, "threads": true, "tls": true,
		"tls-certificates": true, "tls-psk": true, "unix": true, "user": true,
	}
	// Options after which nbdkit does not fork.
	longForeground = map[string]bool{"foreground": true, "no-fork": true, "single": true, "run": true, "exit-with-parent": true}
)

// CheckForeground inspects nbdkit's command line (argv, including argv[0])
// and reports ErrNotForeground unless it will stay in the foreground. With
// socket activation (LISTEN_PID naming this process) nbdkit never forks.
// An empty argv (the command line could not be read) passes.
func CheckForeground(argv []string, pid int, getenv func(string) string) error {
	if len(argv) < 2 {
		return nil
	}
	if getenv != nil && getenv("LISTEN_PID") == strconv.Itoa(pid) {
		return nil
	}
	if fg, _ := scanArgs(argv); fg {
		return nil
	}
	return ErrNotForeground
}

// ReadOnlyServer reports whether nbdkit was started with -r/--readonly, in
// which case no client can write and the volume is best opened without
// taking ownership.
func ReadOnlyServer(argv []string) bool {
	_, ro := scanArgs(argv)
	return ro
}

// scanArgs reads nbdkit's options, up to the plugin name.
func scanArgs(argv []string) (foreground, readonly bool) {
	if len(argv) < 2 {
		return false, false
	}
	args := argv[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return
		case strings.HasPrefix(a, "--"):
			name, _, hasVal := strings.Cut(a[2:], "=")
			foreground = foreground || longForeground[name]
			readonly = readonly || name == "readonly" || name == "read-only"
			if longWithArg[name] && !hasVal {
				i++
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				ch := a[j]
				foreground = foreground || ch == 'f' || ch == 's'
				readonly = readonly || ch == 'r'
				if strings.IndexByte(shortWithArg, ch) >= 0 {
					if j == len(a)-1 {
						i++ // the argument is the next word
					}
					break
				}
			}
		default:
			return // the plugin name: options end here
		}
	}
	return
}

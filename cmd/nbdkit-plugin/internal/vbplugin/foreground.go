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
	if scanArgs(argv).foreground {
		return nil
	}
	return ErrNotForeground
}

// ReadOnlyServer reports whether nbdkit was started with -r/--readonly, in
// which case no client can write and the volume is best opened without
// taking ownership.
func ReadOnlyServer(argv []string) bool { return scanArgs(argv).readonly }

// DefaultThreads is nbdkit's worker threads per connection without
// -t/--threads.
const DefaultThreads = 16

// ServerThreads is the number of worker threads nbdkit runs per connection
// by its command line (-t/--threads; the last one wins, as in nbdkit), or
// DefaultThreads. Every such thread keeps a buffer as large as the largest
// read or write request it has served (see memory.go).
func ServerThreads(argv []string) int {
	if n := scanArgs(argv).threads; n > 0 {
		return n
	}
	return DefaultThreads
}

// nbdkitArgs is what the plugin needs from nbdkit's options.
type nbdkitArgs struct {
	foreground, readonly bool
	threads              int // 0: not given
}

// scanArgs reads nbdkit's options, up to the plugin name.
func scanArgs(argv []string) (r nbdkitArgs) {
	if len(argv) < 2 {
		return r
	}
	args := argv[1:]
	value := func(i int) string { // the word after args[i], if any
		if i+1 < len(args) {
			return args[i+1]
		}
		return ""
	}
	threads := func(v string) {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			r.threads = n
		}
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return r
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			r.foreground = r.foreground || longForeground[name]
			r.readonly = r.readonly || name == "readonly" || name == "read-only"
			if longWithArg[name] && !hasVal {
				val = value(i)
				i++
			}
			if name == "threads" {
				threads(val)
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				ch := a[j]
				r.foreground = r.foreground || ch == 'f' || ch == 's'
				r.readonly = r.readonly || ch == 'r'
				if strings.IndexByte(shortWithArg, ch) >= 0 {
					val := a[j+1:]
					if j == len(a)-1 {
						val = value(i) // the argument is the next word
						i++
					}
					if ch == 't' {
						threads(val)
					}
					break
				}
			}
		default:
			return r // the plugin name: options end here
		}
	}
	return r
}

// Package hostcgroup moves processes into a named cgroup of the host, so
// that they outlive the container that started them.
//
// A container runtime stops a container by killing every process in the
// container's cgroup (with its own PID namespace the kernel does it; with
// hostPID, runc's "kill all" signals each pid listed in the container's
// cgroup). A process moved into a cgroup outside the container's is not
// among them. Children forked after the move inherit the cgroup.
//
// Root is the directory where the host's cgroup file system is mounted
// (/sys/fs/cgroup on the host; a container sees the host's only if it is
// mounted in, e.g. at /host/sys/fs/cgroup, and only a privileged container
// may write it). Two layouts:
//
//   - cgroup v2 (Root/cgroup.controllers exists): one hierarchy. The group
//     is Root/NAME; a pid joins it by being written to
//     Root/NAME/cgroup.procs.
//   - cgroup v1: one hierarchy per directory directly under Root (cpu,
//     memory, freezer, ..., the named "systemd" hierarchy and, on hybrid
//     hosts, the v2 "unified" one). Symbolic links (cpu -> cpu,cpuacct)
//     name a hierarchy already listed under its own name and are skipped;
//     a directory without cgroup.procs is not a hierarchy and is skipped.
//     The group is HIER/NAME in each; the pid is written to each
//     HIER/NAME/cgroup.procs. In the cpuset hierarchy a new group has no
//     CPUs or memory nodes, and no task can join it until they are set:
//     cpuset.cpus and cpuset.mems are copied from the hierarchy's root.
//
// NAME is one path component: letters, digits, '.', '_' and '-', not "."
// or "..". The group is created when missing and never removed by this
// package: the processes in it outlive the process that made it.
package hostcgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DefaultRoot is where the cgroup file system is usually mounted.
const DefaultRoot = "/sys/fs/cgroup"

// ErrInvalid marks a bad group name or root.
var ErrInvalid = errors.New("hostcgroup: invalid argument")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,200}$`)

// ValidName checks a group name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("%w: cgroup name %q (want one path component of [A-Za-z0-9._-])", ErrInvalid, name)
	}
	return nil
}

// Group is a named cgroup in every hierarchy under a root.
type Group struct {
	root, name string
	v2         bool
	dirs       []string // the group's directory in each hierarchy
}

// Open creates the group (where it is missing) and checks that processes
// can be moved into it: every cgroup.procs file of the group can be opened
// for writing. It moves no process.
func Open(root, name string) (*Group, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if root == "" {
		return nil, fmt.Errorf("%w: empty cgroup root", ErrInvalid)
	}
	g := &Group{root: root, name: name}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		g.v2 = true
		g.dirs = []string{filepath.Join(root, name)}
	} else {
		hiers, err := hierarchies(root)
		if err != nil {
			return nil, err
		}
		for _, h := range hiers {
			g.dirs = append(g.dirs, filepath.Join(h, name))
		}
	}
	for _, d := range g.dirs {
		if err := g.create(d); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(d, "cgroup.procs"), os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("hostcgroup: %w", err)
		}
		f.Close()
	}
	return g, nil
}

// hierarchies lists the v1 hierarchies under root, sorted.
func hierarchies(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("hostcgroup: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() { // symbolic links (cpu -> cpu,cpuacct) and files
			continue
		}
		h := filepath.Join(root, e.Name())
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		out = append(out, h)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s holds no cgroup hierarchy (neither cgroup.controllers nor directories with cgroup.procs): is the cgroup file system mounted there?", ErrInvalid, root)
	}
	sort.Strings(out)
	return out, nil
}

// create makes the group's directory in one hierarchy.
func (g *Group) create(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("hostcgroup: %w", err)
	}
	if g.v2 || !isCpuset(filepath.Dir(dir)) {
		return nil
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("hostcgroup: %w", err)
		}
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			return fmt.Errorf("hostcgroup: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
			return fmt.Errorf("hostcgroup: %w", err)
		}
	}
	return nil
}

// isCpuset reports whether hier is a v1 hierarchy with the cpuset controller.
func isCpuset(hier string) bool {
	_, err := os.Stat(filepath.Join(hier, "cpuset.cpus"))
	return err == nil
}

// Name is the group's name.
func (g *Group) Name() string { return g.name }

// Dirs are the group's directories, one per hierarchy.
func (g *Group) Dirs() []string { return append([]string(nil), g.dirs...) }

// Place moves process pid (all its threads) into the group, in every
// hierarchy. Processes it forks afterwards start there.
func (g *Group) Place(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("%w: pid %d", ErrInvalid, pid)
	}
	for _, d := range g.dirs {
		f := filepath.Join(d, "cgroup.procs")
		if err := writeFile(f, strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("hostcgroup: move pid %d into %s: %w", pid, f, err)
		}
	}
	return nil
}

// writeFile writes s to an existing file in one write(2): cgroup files
// take one value per write.
func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Pids lists the processes in the group, in any of its hierarchies, sorted.
func (g *Group) Pids() ([]int, error) {
	seen := map[int]bool{}
	for _, d := range g.dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			return nil, fmt.Errorf("hostcgroup: %w", err)
		}
		for _, l := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(l); err == nil {
				seen[pid] = true
			}
		}
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// Remove removes the group's directories; it fails while processes are in
// it. For tests and for tidying up after the last server exited.
func (g *Group) Remove() error {
	var errs []error
	for _, d := range g.dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("hostcgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

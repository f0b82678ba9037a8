package driver

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// The mkfsOptions StorageClass parameter reaches mkfs's command line on
// the node, as root, on the tenant's volume. An allow-list per filesystem
// keeps it to options that shape the new filesystem only: nothing that
// names a host path (ext4 -d copies a host directory into the volume, -l
// and -z read or write host files, -J device= and -E offset= point outside
// the volume's filesystem; xfs -p reads a protofile, -d file=/name=, -l
// logdev=, -r rtdev= and -c options= name files or devices), nothing that
// stops mkfs from formatting (-n, -N, -S, -V) and nothing the driver sets
// itself (-t).
//
// Each option is its own word: "-b 4096" or "-b4096"; flags are not
// combined ("-qF" is refused). Values are made of [A-Za-z0-9_.,=:^+-]: no
// '/', so no value is a path. Anything else is InvalidArgument at
// CreateVolume (and at NodeStageVolume, for a volume context written by
// hand), naming the option.

// mkfsOption is one allowed option.
type mkfsOption struct {
	arg bool // takes a value
	// sub lists the allowed keys of a comma-separated key[=value] value;
	// nil allows any value (of the safe characters).
	sub []string
}

var mkfsAllowed = map[string]map[string]mkfsOption{
	"ext4": {
		"-b": {arg: true}, "-C": {arg: true}, "-g": {arg: true}, "-G": {arg: true},
		"-i": {arg: true}, "-I": {arg: true}, "-m": {arg: true}, "-N": {arg: true},
		"-L": {arg: true}, "-O": {arg: true}, "-o": {arg: true}, "-r": {arg: true},
		"-T": {arg: true}, "-U": {arg: true}, "-e": {arg: true},
		"-j": {}, "-q": {}, "-v": {}, "-F": {}, "-D": {},
		"-J": {arg: true, sub: []string{"size", "fast_commit_size", "location"}},
		"-E": {arg: true, sub: []string{"stride", "stripe_width", "stripe-width", "resize", "lazy_itable_init",
			"lazy_journal_init", "nodiscard", "discard", "root_owner", "num_backup_sb", "packed_meta_blocks",
			"assume_storage_prezeroed", "encoding", "encoding_flags", "quotatype", "orphan_file_size",
			"mmp_update_interval", "no_copy_xattrs"}},
	},
	"xfs": {
		"-b": {arg: true, sub: []string{"size"}},
		"-m": {arg: true, sub: []string{"crc", "finobt", "uuid", "rmapbt", "reflink", "inobtcount", "bigtime", "autofsck", "metadir"}},
		"-d": {arg: true, sub: []string{"agcount", "agsize", "su", "sunit", "sw", "swidth", "noalign", "cowextsize",
			"extszinherit", "daxinherit", "concurrency"}},
		"-i": {arg: true, sub: []string{"size", "perblock", "maxpct", "align", "attr", "projid32bit", "sparse", "nrext64", "exchange"}},
		"-l": {arg: true, sub: []string{"size", "agnum", "version", "sunit", "su", "lazy-count", "concurrency"}},
		"-n": {arg: true, sub: []string{"size", "version", "ftype", "parent"}},
		"-s": {arg: true, sub: []string{"size"}},
		"-L": {arg: true},
		"-K": {}, "-f": {}, "-q": {},
	},
}

// mkfsValueOK reports whether a value uses only the safe characters.
func mkfsValueOK(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.,=:^+-", r)
		if !ok {
			return false
		}
	}
	return true
}

// checkMkfsOptionsFor checks mkfs arguments against the allow-list of
// fsType; with no fsType (the capability will name it) they must suit at
// least one filesystem, and CreateVolume and NodeStage check them again
// against the capability's.
func checkMkfsOptionsFor(fsType string, args []string) error {
	if fsType != "" {
		return checkMkfsOptions(fsType, args)
	}
	err := checkMkfsOptions("ext4", args)
	if err != nil && checkMkfsOptions("xfs", args) == nil {
		return nil
	}
	return err
}

// checkMkfsOptions checks mkfs arguments for fsType ("" is ext4, the
// default) against the allow-list.
func checkMkfsOptions(fsType string, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if fsType == "" {
		fsType = "ext4"
	}
	allowed, ok := mkfsAllowed[fsType]
	if !ok {
		return fmt.Errorf("parameter %s: no options are allowed for filesystem %q", ParamMkfsOptions, fsType)
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' {
			return fmt.Errorf("parameter %s: %q is not an option (positional arguments are not allowed)", ParamMkfsOptions, a)
		}
		name := a[:2]
		opt, ok := allowed[name]
		if !ok || a[1] == '-' {
			return fmt.Errorf("parameter %s: option %s is not allowed for %s (allowed: %s)", ParamMkfsOptions, a, fsType, allowedList(allowed))
		}
		if !opt.arg {
			if len(a) > 2 {
				return fmt.Errorf("parameter %s: option %s: give each option as its own word (%s takes no value)", ParamMkfsOptions, a, name)
			}
			continue
		}
		val := a[2:]
		if val == "" {
			if i+1 == len(args) {
				return fmt.Errorf("parameter %s: option %s needs a value", ParamMkfsOptions, name)
			}
			i++
			val = args[i]
		}
		if !mkfsValueOK(val) {
			return fmt.Errorf("parameter %s: option %s %q: values may hold only letters, digits and _.,=:^+- (no paths)", ParamMkfsOptions, name, val)
		}
		if opt.sub == nil {
			continue
		}
		for _, kv := range strings.Split(val, ",") {
			k, _, _ := strings.Cut(kv, "=")
			if !slices.Contains(opt.sub, k) {
				return fmt.Errorf("parameter %s: option %s %s is not allowed for %s (allowed: %s)", ParamMkfsOptions, name, k, fsType, strings.Join(opt.sub, ", "))
			}
		}
	}
	return nil
}

func allowedList(m map[string]mkfsOption) string {
	var names []string
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

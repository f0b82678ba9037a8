package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

func TestCheckMkfsOptions(t *testing.T) {
	for _, c := range []struct {
		fs, opts string
		bad      string // "" when allowed; else a word the error names
	}{
		{"ext4", "", ""},
		{"", "-b 4096 -i 16384 -I 256 -m 1 -N 100000 -L data -j -J size=64", ""},
		{"ext4", "-b4096 -O ^has_journal,metadata_csum -E lazy_itable_init=0,lazy_journal_init=1,stride=16,stripe_width=64,nodiscard", ""},
		{"ext4", "-E root_owner=1000:1000 -T news -q -F", ""},
		{"xfs", "-b size=4096 -m crc=1,reflink=1,bigtime=1 -i size=512 -l size=64m,version=2 -n size=8192 -s size=4096 -L data -K -f", ""},
		{"xfs", "-d agcount=4,su=64k,sw=2", ""},

		// Attacks: host paths into the tenant's volume, host files read or
		// written, devices outside the volume.
		{"ext4", "-d /etc", "-d"},
		{"ext4", "-d/root", "-d"},
		{"ext4", "-l /etc/shadow", "-l"},
		{"ext4", "-z /var/lib/undo", "-z"},
		{"ext4", "-J device=/dev/sda", "device"},
		{"ext4", "-E offset=4096", "offset"},
		{"ext4", "-L ../../x", "../../x"},
		{"ext4", "-O /x", "/x"},
		{"xfs", "-p /etc/protofile", "-p"},
		{"xfs", "-d file=/etc/passwd", "file"},
		{"xfs", "-d name=/dev/sda", "name"},
		{"xfs", "-l logdev=/dev/sdb", "logdev"},
		{"xfs", "-r rtdev=/dev/sdc", "-r"},
		{"xfs", "-c options=/etc/mkfs.xfs.conf", "-c"},
		{"xfs", "-l internal=0", "internal"},

		// Options that stop mkfs from formatting, or that the driver sets.
		{"ext4", "-n", "-n"},
		{"ext4", "-S", "-S"},
		{"ext4", "-V", "-V"},
		{"ext4", "-t ext2", "-t"},
		{"xfs", "-N", "-N"},
		// Forms the check does not parse: combined flags, long options,
		// positional arguments, a missing value.
		{"ext4", "-qF", "-qF"},
		{"ext4", "--help", "--help"},
		{"ext4", "/dev/sda", "/dev/sda"},
		{"ext4", "1000", "1000"},
		{"ext4", "-b", "-b"},
		{"ext4", "-L a$(reboot)", "a$(reboot)"},
		{"btrfs", "-L x", "btrfs"},
	} {
		err := checkMkfsOptions(c.fs, strings.Fields(c.opts))
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%s %q: %v", c.fs, c.opts, err)
		case c.bad != "" && err == nil:
			t.Errorf("%s %q: accepted", c.fs, c.opts)
		case c.bad != "" && !strings.Contains(err.Error(), c.bad):
			t.Errorf("%s %q: error %q does not name %q", c.fs, c.opts, err, c.bad)
		}
	}
}

// CreateVolume refuses disallowed mkfs options with InvalidArgument, for
// the StorageClass's fsType and for the capability's.
func TestCreateVolumeMkfsOptions(t *testing.T) {
	r := newCtrlRig(t)
	create := func(params map[string]string, fs string) error {
		vc := mountCapability(snw)
		vc.GetMount().FsType = fs
		_, err := r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "mkfs", VolumeCapabilities: []*csi.VolumeCapability{vc},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, Parameters: params})
		return err
	}
	for _, c := range []struct {
		params map[string]string
		fs     string
	}{
		{map[string]string{ParamMkfsOptions: "-d /etc"}, ""},
		{map[string]string{ParamFsType: "xfs", ParamMkfsOptions: "-p /etc/proto"}, ""},
		{map[string]string{ParamMkfsOptions: "-E lazy_itable_init=0"}, "xfs"}, // an ext4 option on an xfs capability
	} {
		if err := create(c.params, c.fs); grpcstatus.Code(err) != codes.InvalidArgument {
			t.Errorf("%v (fs %q): %v, want InvalidArgument", c.params, c.fs, err)
		}
	}
	if err := create(map[string]string{ParamMkfsOptions: "-E lazy_itable_init=0 -m 0"}, "ext4"); err != nil {
		t.Errorf("allowed options refused: %v", err)
	}
	// A class that leaves the filesystem to the capability
	// (csi.storage.k8s.io/fstype) may carry xfs options for an xfs volume.
	if err := create(map[string]string{ParamMkfsOptions: "-m reflink=1"}, "xfs"); err != nil {
		t.Errorf("xfs options on an xfs capability refused: %v", err)
	}
	if _, err := parseVolumeContext(map[string]string{ParamMkfsOptions: "-m reflink=1"}); err != nil {
		t.Errorf("xfs options in a volume context without fsType refused: %v", err)
	}
	if _, err := parseVolumeContext(map[string]string{ParamMkfsOptions: "-d /etc"}); err == nil {
		t.Error("volume context mkfsOptions=-d /etc accepted")
	}
}

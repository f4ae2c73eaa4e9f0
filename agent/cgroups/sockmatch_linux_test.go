package cgroups

import (
	"errors"
	"strings"
	"testing"

	"github.com/blang/semver/v4"
	"github.com/cilium/cilium/pkg/mountinfo"
	"github.com/cilium/cilium/pkg/version"
)

func TestCheckSocketMatching(t *testing.T) {
	v1 := func(point, opts string) *mountinfo.MountInfo {
		return &mountinfo.MountInfo{FilesystemType: "cgroup", MountPoint: point, SuperOptions: opts}
	}
	v2 := &mountinfo.MountInfo{FilesystemType: "cgroup2", MountPoint: "/sys/fs/cgroup/unified", SuperOptions: "rw,nsdelegate"}
	netCls := v1("/sys/fs/cgroup/net_cls,net_prio", "rw,net_cls,net_prio")
	old, fixed := semver.MustParse("5.10.0"), semver.MustParse("5.14.0")
	for _, tc := range []struct {
		name    string
		kernel  semver.Version
		mounts  []*mountinfo.MountInfo
		refused string // the controller named, "" if accepted
	}{
		{"cgroup v2 only, old kernel", old, []*mountinfo.MountInfo{v2}, ""},
		{"hybrid with net_cls, old kernel", old, []*mountinfo.MountInfo{v2, netCls}, "net_cls"},
		{"hybrid with net_prio alone, old kernel", old, []*mountinfo.MountInfo{v2, v1("/sys/fs/cgroup/net_prio", "rw,net_prio")}, "net_prio"},
		{"hybrid without the net controllers, old kernel", old, []*mountinfo.MountInfo{v2, v1("/sys/fs/cgroup/memory", "rw,memory")}, ""},
		{"an option that only contains the name, old kernel", old, []*mountinfo.MountInfo{v2, v1("/x", "rw,name=net_cls_like")}, ""},
		{"hybrid with net_cls, fixed kernel", fixed, []*mountinfo.MountInfo{v2, netCls}, ""},
		{"hybrid with net_cls, newer kernel", semver.MustParse("6.18.0"), []*mountinfo.MountInfo{v2, netCls}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSocketMatching(tc.kernel, tc.mounts)
			if tc.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var se *SocketMatchingError
			if !errors.As(err, &se) || !errors.Is(err, ErrSocketMatching) {
				t.Fatalf("got %v, want a SocketMatchingError", err)
			}
			if se.Controller != tc.refused || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), "5.14") {
				t.Errorf("error %q does not name %s and the fixed kernel", err, tc.refused)
			}
		})
	}
}

// This host: the check agrees with its kernel and mounts, which the agent
// starts on.
func TestCheckHostSocketMatching(t *testing.T) {
	kernel, err := version.GetKernelVersion()
	if err != nil {
		t.Fatal(err)
	}
	err = CheckHostSocketMatching()
	if kernel.GTE(SocketMatchingFixed) && err != nil {
		t.Fatalf("kernel %s: %v", kernel, err)
	}
	t.Logf("kernel %s: %v", kernel, err)
}

package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FindMount returns the mount point of the cgroup2 filesystem from
// /proc/self/mounts. On hybrid hosts it is not /sys/fs/cgroup (this project's
// test machines mount it at /sys/fs/cgroup/unified), so it is never assumed.
func FindMount() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return ParseMounts(f)
}

// ErrNoCgroup2 is returned when no cgroup2 filesystem is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 filesystem mounted")

// ParseMounts returns the first cgroup2 mount point in a /proc/mounts style
// listing.
func ParseMounts(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != "cgroup2" {
			continue
		}
		return unescapeMount(fields[1]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeMount undoes the kernel's octal escaping of space, tab, newline
// and backslash in mount points.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// IsCgroup2 reports whether path is on a cgroup2 filesystem.
func IsCgroup2(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// ID returns the cgroup id of the cgroup directory at path: its inode number
// on cgroup2, which is what bpf_get_current_cgroup_id returns for a task in
// it.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup %s: not a directory", path)
	}
	return st.Ino, nil
}

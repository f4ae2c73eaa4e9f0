//go:build !linux

package main

import (
	"context"
	"fmt"
	"io"
)

func run(_ context.Context, _ []string, out io.Writer) int {
	fmt.Fprintln(out, "the sidewall demo needs Linux: it uses cgroup v2, network namespaces and BPF")
	return 1
}

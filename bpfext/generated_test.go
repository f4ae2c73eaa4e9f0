package bpfext

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidewall/sidewall/hack/harness"
)

// The committed bpf2go output must be what the C sources compile to today.
// bpf2go builds reproducibly (no clang version, no absolute paths in the
// object), so regenerating with the pinned clang into a temporary directory
// must give the same bytes. `make verify-generated` does the same check
// through git diff.
func TestGeneratedObjectsFresh(t *testing.T) {
	harness.RequireIntegration(t)
	const clang, strip = "clang-19", "llvm-strip-19"
	for _, tool := range []string{clang, strip} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make clang installs it): cannot check the committed BPF objects", tool)
		}
	}
	dir, err := filepath.Abs("objs")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "gen.go"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := t.TempDir()
	env := map[string]string{"BPF_CLANG": clang, "BPF_STRIP": strip}
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "//go:generate ")
		if !ok {
			continue
		}
		args := splitGenerate(os.Expand(line, func(k string) string { return env[k] }))
		if len(args) < 3 || args[0] != "go" || args[1] != "tool" || args[2] != "bpf2go" {
			t.Fatalf("unexpected go:generate line %q", line)
		}
		args = append([]string{"tool", "bpf2go", "-output-dir", out}, args[3:]...)
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOPACKAGE=objs", "GOFILE=gen.go")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bpf2go: %v: %s", err, b)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no go:generate lines in objs/gen.go")
	}
	fresh, err := filepath.Glob(filepath.Join(out, "*"))
	if err != nil || len(fresh) == 0 {
		t.Fatalf("bpf2go wrote nothing: %v", err)
	}
	for _, p := range fresh {
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, filepath.Base(p)))
		if err != nil {
			t.Errorf("%s: generated but not committed: %v", filepath.Base(p), err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate`", filepath.Base(p))
		}
	}
}

// splitGenerate splits a go:generate line into words, honouring double quotes.
func splitGenerate(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case (r == ' ' || r == '\t') && !inQuote:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

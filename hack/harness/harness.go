package harness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Module is the import path of the sidewall module.
const Module = "github.com/sidewall/sidewall"

// RepoRoot walks up from the working directory to the go.mod of the sidewall
// module; `go test` runs each package in its own directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			ours := sc.Scan() && strings.TrimSpace(sc.Text()) == "module "+Module
			f.Close()
			if ours {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the working directory is not inside the sidewall repository")
		}
		dir = parent
	}
}

// ErrToolMissing is wrapped by Tool when a tool is not built.
var ErrToolMissing = errors.New("tool missing: run `make tools`")

// Tool returns the path of a tool that `make tools` builds into bin/ (for
// example "hubble"); $SIDEWALL_<NAME> overrides it. Tests that need a tool
// call RequireIntegration first.
func Tool(name string) (string, error) {
	env := "SIDEWALL_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("find %s: %w", name, err)
	}
	p := filepath.Join(root, "bin", name)
	st, err := os.Stat(p)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s (or $%s): %w", p, env, ErrToolMissing)
	}
	return p, nil
}

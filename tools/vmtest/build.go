package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/lvwatch/lvwatch/internal/testvm"
)

// buildTag selects the tests that need a kernel with device-mapper.
const buildTag = "vmtest"

// goPackage is what the harness needs from `go list`.
type goPackage struct {
	ImportPath, Dir           string
	TestGoFiles, XTestGoFiles []string
}

// testFiles is the set of the package's test files.
func (p goPackage) testFiles() []string { return append(p.TestGoFiles, p.XTestGoFiles...) }

// taggedPackages lists the module's packages that have test files built only
// with buildTag: those are the ones to run in the guest.
func taggedPackages(moduleDir string) ([]goPackage, error) {
	plain, err := listPackages(moduleDir)
	if err != nil {
		return nil, err
	}
	tagged, err := listPackages(moduleDir, "-tags", buildTag)
	if err != nil {
		return nil, err
	}
	var out []goPackage
	for _, p := range tagged {
		before := plain[p.ImportPath].testFiles()
		if slices.ContainsFunc(p.testFiles(), func(f string) bool { return !slices.Contains(before, f) }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b goPackage) int { return strings.Compare(a.ImportPath, b.ImportPath) })
	return out, nil
}

func listPackages(moduleDir string, flags ...string) (map[string]goPackage, error) {
	args := append([]string{"list", "-e", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles"}, flags...)
	cmd := exec.Command("go", append(args, "./...")...)
	cmd.Dir = moduleDir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	pkgs := map[string]goPackage{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			return pkgs, nil
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		pkgs[p.ImportPath] = p
	}
}

// binaryName names a package's test binary after its path in the module,
// so that two packages with the same name do not collide.
func binaryName(modulePath, importPath string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(importPath, modulePath), "/")
	if rel == "" {
		rel = filepath.Base(modulePath)
	}
	return strings.ReplaceAll(rel, "/", "_") + ".test"
}

// buildTestBinary compiles a package's tests, tagged ones included, into out.
func buildTestBinary(moduleDir, importPath, out string) error {
	return testvm.GoStatic(moduleDir, "test", "-c", "-tags", buildTag, "-o", out, importPath)
}

// Package shoal holds what every part of Shoal shares at the repository root: the version.
//
// The version lives in the file VERSION, the one source for the Go binary (this package), the
// Python package's metadata (setuptools reads it, see pyproject.toml) and shoal.__version__.
package shoal

import (
	_ "embed"
	"strings"
)

//go:embed VERSION
var versionFile string

// Version is Shoal's release version, from the file VERSION.
var Version = strings.TrimSpace(versionFile)

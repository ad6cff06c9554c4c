package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

// assets holds the web app. static/index.html, app.js and style.css are committed;
// static/vendor/ is filled by the npm build (make dashboard) and is absent on a fresh clone,
// in which case the page still works and says that its charts are missing.
//
//go:embed static
var assets embed.FS

// staticHandler serves the embedded app; index.html is never cached so that a new binary's
// page is picked up at once.
func staticHandler() http.Handler {
	sub, err := fs.Sub(assets, "static")
	if err != nil {
		panic(err) // the embed pattern above guarantees the directory
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" || r.URL.Path == "/index.html" {
			w.Header().Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(w, r)
	})
}

// HasVendor reports whether the chart library was built into this binary.
func HasVendor() bool {
	_, err := fs.Stat(assets, "static/vendor/echarts.min.js")
	return err == nil
}

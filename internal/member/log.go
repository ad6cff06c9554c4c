package member

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
)

// newLogAdapter returns a *log.Logger for memberlist whose lines go to
// logger at debug level, with memberlist's own level ("[WARN]", …) kept as
// an attribute. A nil logger discards.
func newLogAdapter(logger *slog.Logger, name string) *log.Logger {
	if logger == nil {
		return log.New(io.Discard, "", 0)
	}
	return log.New(&logWriter{logger: logger.With("member", name)}, "", 0)
}

type logWriter struct {
	logger *slog.Logger
}

func (w *logWriter) Write(p []byte) (int, error) {
	if !w.logger.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	line := string(bytes.TrimSpace(p))
	level := ""
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			level, line = line[1:end], strings.TrimSpace(line[end+1:])
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	w.logger.Debug(line, "source", "memberlist", "level_memberlist", level)
	return len(p), nil
}

package dashboard

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/scheduler"
)

// Recorder is implemented by Sources that record task runs and memory for reports and run the
// statistical profiler (SchedulerSource does). The dashboard holds a recording session while a
// viewer is connected, so a report can be downloaded for any window it watched; clients'
// get_task_stream and performance_report hold their own sessions.
type Recorder interface {
	Record(ctx context.Context, on bool) error
	Recorded(ctx context.Context, start, stop int64) (scheduler.Recording, error)
	Profiling(ctx context.Context, on bool) error
	Profile(ctx context.Context, group string) (scheduler.Profile, error)
}

// Record implements Recorder.
func (s *SchedulerSource) Record(ctx context.Context, on bool) error { return s.srv.Record(ctx, on) }

// Recorded implements Recorder.
func (s *SchedulerSource) Recorded(ctx context.Context, start, stop int64) (scheduler.Recording, error) {
	return s.srv.Recorded(ctx, start, stop)
}

// Profiling implements Recorder.
func (s *SchedulerSource) Profiling(ctx context.Context, on bool) error {
	return s.srv.Profiling(ctx, on)
}

// Profile implements Recorder.
func (s *SchedulerSource) Profile(ctx context.Context, group string) (scheduler.Profile, error) {
	return s.srv.ProfileOf(ctx, group)
}

//go:embed report.html
var reportTemplate []byte

const reportMarker = "/*SHOAL_REPORT_DATA*/"

// ReportData is what a performance report shows: the recording of a window and the profile.
type ReportData struct {
	Start     int64               `json:"start"` // unix nanoseconds
	Stop      int64               `json:"stop"`
	Generated int64               `json:"generated"`
	Recording scheduler.Recording `json:"recording"`
	Profile   *scheduler.Profile  `json:"profile,omitempty"`
}

// RenderReport returns the self-contained HTML page of a performance report: no external
// script, style or font, so it opens offline. The data is embedded as JSON inside a script
// element, with "<" escaped so that no value can end the element.
func RenderReport(d ReportData) ([]byte, error) {
	js, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	js = bytes.ReplaceAll(js, []byte("<"), []byte(`\u003c`))
	i := bytes.Index(reportTemplate, []byte(reportMarker))
	if i < 0 {
		return nil, fmt.Errorf("dashboard: report template has no data marker")
	}
	out := make([]byte, 0, len(reportTemplate)+len(js))
	out = append(out, reportTemplate[:i]...)
	out = append(out, js...)
	return append(out, reportTemplate[i+len(reportMarker):]...), nil
}

// maxReportWindow bounds ?last= (the recorder keeps an hour of memory samples).
const maxReportWindow = 24 * time.Hour

// window reads ?start=&stop= (unix nanoseconds) or ?last=SECONDS (the window ending now).
func window(r *http.Request) (start, stop int64, err error) {
	q := r.URL.Query()
	if v := q.Get("last"); v != "" {
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil || secs <= 0 || time.Duration(secs*1e9) > maxReportWindow {
			return 0, 0, fmt.Errorf("last: want seconds in (0, %v]", maxReportWindow.Seconds())
		}
		stop = time.Now().UnixNano()
		return stop - int64(secs*1e9), stop, nil
	}
	for _, p := range []struct {
		name string
		v    *int64
	}{{"start", &start}, {"stop", &stop}} {
		if s := q.Get(p.name); s != "" {
			if *p.v, err = strconv.ParseInt(s, 10, 64); err != nil || *p.v < 0 {
				return 0, 0, fmt.Errorf("%s: want unix nanoseconds", p.name)
			}
		}
	}
	return start, stop, nil
}

func (s *Server) recorder(w http.ResponseWriter) (Recorder, bool) {
	rec, ok := s.cfg.Source.(Recorder)
	if !ok {
		writeError(w, http.StatusNotFound, "this dashboard's source keeps no recording")
	}
	return rec, ok
}

// apiReport serves GET /api/v1/report: the performance report page for a window (see
// window); ?download=1 makes it an attachment.
func (s *Server) apiReport(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.recorder(w)
	if !ok {
		return
	}
	start, stop, err := window(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := s.callCtx(r)
	defer cancel()
	d := ReportData{Start: start, Stop: stop, Generated: time.Now().UnixNano()}
	if d.Recording, err = rec.Recorded(ctx, start, stop); err != nil {
		sourceFailed(w, err)
		return
	}
	if p, err := rec.Profile(ctx, ""); err == nil {
		d.Profile = &p
	}
	page, err := RenderReport(d)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Query().Get("download") != "" {
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="shoal-report-%s.html"`, time.Unix(0, d.Generated).UTC().Format("20060102-150405")))
	}
	_, _ = w.Write(page)
}

// apiTaskStream serves GET /api/v1/task-stream: the recording of a window as JSON.
func (s *Server) apiTaskStream(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.recorder(w)
	if !ok {
		return
	}
	start, stop, err := window(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := s.callCtx(r)
	defer cancel()
	out, err := rec.Recorded(ctx, start, stop)
	if err != nil {
		sourceFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// apiProfile serves GET /api/v1/profile?group=: the profile kept so far.
func (s *Server) apiProfile(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.recorder(w)
	if !ok {
		return
	}
	ctx, cancel := s.callCtx(r)
	defer cancel()
	p, err := rec.Profile(ctx, r.URL.Query().Get("group"))
	if err != nil {
		sourceFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// apiProfiling serves POST /api/v1/profile?on=1|0: the page's profiler switch. The dashboard
// holds one profiling session at most, released when the switch goes off or the dashboard
// closes.
func (s *Server) apiProfiling(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.recorder(w)
	if !ok {
		return
	}
	on := r.URL.Query().Get("on") == "1"
	s.profMu.Lock()
	defer s.profMu.Unlock()
	if on != s.profOn {
		ctx, cancel := s.callCtx(r)
		defer cancel()
		if err := rec.Profiling(ctx, on); err != nil {
			sourceFailed(w, err)
			return
		}
		s.profOn = on
	}
	writeJSON(w, http.StatusOK, map[string]bool{"on": s.profOn})
}

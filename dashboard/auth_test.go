package dashboard

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRequireToken(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("served " + r.URL.Path)) })
	open := httptest.NewRecorder()
	RequireToken(ok, "").ServeHTTP(open, httptest.NewRequest("GET", "/api/v1/workers", nil))
	require.Equal(t, "served /api/v1/workers", open.Body.String(), "no token: nothing to check")

	h := RequireToken(ok, "s3cret")
	do := func(method, target string, body string, mod func(*http.Request)) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, target, strings.NewReader(body))
		if body != "" {
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		if mod != nil {
			mod(r)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}

	require.Equal(t, "served /health", do("GET", "/health", "", nil).Body.String(), "health needs no token")
	for _, p := range []string{"/api/v1/workers", "/metrics", "/ws"} {
		w := do("GET", p, "", nil)
		require.Equal(t, http.StatusUnauthorized, w.Code, p)
		require.Contains(t, w.Header().Get("WWW-Authenticate"), "Bearer", p)
		w = do("GET", p, "", func(r *http.Request) { r.Header.Set("Authorization", "Bearer wrong") })
		require.Equal(t, http.StatusUnauthorized, w.Code, p)
		w = do("GET", p, "", func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret") })
		require.Equal(t, "served "+p, w.Body.String())
	}

	// a person is sent to the login page, which comes back to where they were going
	w := do("GET", "/tasks?x=1", "", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	require.Equal(t, "/login?next="+url.QueryEscape("/tasks?x=1"), w.Header().Get("Location"))
	require.Contains(t, do("GET", "/login", "", nil).Body.String(), `name="token"`)
	w = do("POST", "/login", "token=nope&next=/tasks", nil)
	require.Equal(t, http.StatusUnauthorized, w.Code)
	require.Empty(t, w.Result().Cookies())
	w = do("POST", "/login", "token=s3cret&next=/tasks", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	require.Equal(t, "/tasks", w.Header().Get("Location"))
	cookies := w.Result().Cookies()
	require.Len(t, cookies, 1)
	require.NotContains(t, cookies[0].Value, "s3cret", "the cookie proves the token without holding it")
	require.True(t, cookies[0].HttpOnly)
	w = do("GET", "/api/v1/workers", "", func(r *http.Request) { r.AddCookie(cookies[0]) })
	require.Equal(t, "served /api/v1/workers", w.Body.String())
	w = do("GET", "/", "", func(r *http.Request) { r.AddCookie(&http.Cookie{Name: authCookie, Value: "forged"}) })
	require.Equal(t, http.StatusSeeOther, w.Code)

	// no open redirect after login
	w = do("POST", "/login", "token=s3cret&next=//evil.example/", nil)
	require.Equal(t, "/", w.Header().Get("Location"))

	// a link carrying the token logs in and drops it from the address
	w = do("GET", "/groups?token=s3cret&a=b", "", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	require.Equal(t, "/groups?a=b", w.Header().Get("Location"))
	require.Len(t, w.Result().Cookies(), 1)
	require.Equal(t, http.StatusUnauthorized, do("GET", "/api/v1/graph?token=bad", "", nil).Code)
}

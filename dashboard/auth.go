package dashboard

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// authCookie holds a proof of the token (an HMAC of a fixed text keyed by it), never the
// token itself.
const authCookie = "shoal_auth"

// RequireToken wraps h so that, when token is not empty, every path but /health needs it:
// scripts and Prometheus send `Authorization: Bearer <token>`; a browser logs in once at
// /login (or opens a link carrying ?token=…), which sets a cookie. Unauthenticated API,
// metrics and websocket requests get 401; pages redirect to the login page. With an empty
// token h is returned as it is.
func RequireToken(h http.Handler, token string) http.Handler {
	if token == "" {
		return h
	}
	a := &tokenAuth{next: h, token: []byte(token), proof: cookieProof(token)}
	return a
}

type tokenAuth struct {
	next  http.Handler
	token []byte
	proof string
}

func cookieProof(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("shoal dashboard session"))
	return hex.EncodeToString(m.Sum(nil))
}

func (a *tokenAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/health":
		a.next.ServeHTTP(w, r)
	case r.URL.Path == "/login":
		a.login(w, r)
	case a.bearerOK(r) || a.cookieOK(r):
		a.next.ServeHTTP(w, r)
	case r.Method == http.MethodGet && r.URL.Query().Has("token"):
		q := r.URL.Query()
		if !a.tokenOK(q.Get("token")) {
			a.refuse(w, r)
			return
		}
		a.setCookie(w, r)
		q.Del("token")
		u := *r.URL
		u.RawQuery = q.Encode()
		http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
	default:
		a.refuse(w, r)
	}
}

func (a *tokenAuth) tokenOK(t string) bool {
	return subtle.ConstantTimeCompare([]byte(t), a.token) == 1
}

func (a *tokenAuth) bearerOK(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	t, ok := strings.CutPrefix(h, "Bearer ")
	return ok && a.tokenOK(strings.TrimSpace(t))
}

func (a *tokenAuth) cookieOK(r *http.Request) bool {
	c, err := r.Cookie(authCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(a.proof)) == 1
}

func (a *tokenAuth) setCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: authCookie, Value: a.proof, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: int((30 * 24 * time.Hour).Seconds())})
}

// refuse answers an unauthenticated request: 401 for machines, the login page for people.
func (a *tokenAuth) refuse(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if r.Method != http.MethodGet || p == "/ws" || p == "/metrics" || strings.HasPrefix(p, "/api/") {
		w.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
		http.Error(w, "authentication required: this cluster has a token; send 'Authorization: Bearer <token>' "+
			"or log in at /login", http.StatusUnauthorized)
		return
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Shoal — log in</title>
<style>body{font:16px system-ui,sans-serif;margin:15vh auto;max-width:26em;color:#222}
input{font:inherit;padding:.4em;width:100%;box-sizing:border-box;margin:.5em 0}
button{font:inherit;padding:.4em 1.2em}.err{color:#b00020}</style></head>
<body><h1>Shoal dashboard</h1>
<p>This cluster is protected by a token (the contents of its <code>--token-file</code>).</p>
{{if .Failed}}<p class="err">That token is not this cluster's.</p>{{end}}
<form method="post" action="/login"><input type="hidden" name="next" value="{{.Next}}">
<input type="password" name="token" placeholder="token" autofocus autocomplete="current-password">
<button type="submit">Log in</button></form></body></html>
`))

// login serves the login form (GET) and checks it (POST), setting the cookie on success.
func (a *tokenAuth) login(w http.ResponseWriter, r *http.Request) {
	next := r.FormValue("next")
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/login") {
		next = "/" // only local paths: no open redirect
	}
	data := struct {
		Next   string
		Failed bool
	}{Next: next}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	switch r.Method {
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
		if a.tokenOK(r.PostFormValue("token")) {
			a.setCookie(w, r)
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		time.Sleep(200 * time.Millisecond) // a guesser gets a few tries a second per connection
		data.Failed = true
		w.WriteHeader(http.StatusUnauthorized)
	case http.MethodGet:
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	_ = loginPage.Execute(w, data)
}

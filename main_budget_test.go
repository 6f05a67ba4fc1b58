package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestBudgetCommand guards `deskgate budget`: a key on the command line
// is refused (shell history); the key on stdin goes in X-API-Key, never
// the URL; the answer prints as a table without the key; an error answer
// prints its code and exits 1.
func TestBudgetCommand(t *testing.T) {
	const key = "sk_live_AbCdEfGhIjKlMnOpQrStUvWx"
	var out, errb bytes.Buffer
	if code := budgetCmd([]string{key}, strings.NewReader(""), &out, &errb); code != 2 || !strings.Contains(errb.String(), "stdin") {
		t.Fatalf("key as an argument: exit %d, %s", code, errb.String())
	}
	if strings.Contains(errb.String(), key) {
		t.Error("the refusal echoes the key")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" || r.URL.Path != "/budget" {
			t.Errorf("request %s", r.URL)
		}
		if r.Header.Get("X-API-Key") != key {
			w.WriteHeader(401)
			w.Write([]byte(`{"code":"AUTH_API_KEY_INVALID","message":"Clé API invalide"}`))
			return
		}
		w.Write([]byte(`{"app_id":"app_pro","key_prefix":"sk_live_AbCd","key_by":"app","plan":"pro",
		  "buckets":[{"bucket":"global","policy":"plan:pro","mode":"enforce","store":"redis","routes":["GET /a"],
		    "tiers":[{"name":"10s","limit":4,"window_seconds":10,"used":3,"remaining":1,"reset_at":"2027-01-01T00:00:10Z","reset_in_seconds":10}]}],
		  "quotas":[{"name":"tickets","match":"POST /api/v1/tickets","mode":"enforce","limit":1000,"used":412,"reserved":2,"remaining":586,
		    "resets_at":"2027-02-01T00:00:00Z","reset_in_seconds":86400,"store":"redis"}]}`))
	}))
	defer srv.Close()
	out.Reset()
	errb.Reset()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if code := budgetCmd([]string{"-admin", addr}, strings.NewReader(key+"\n"), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"app app_pro (key sk_live_AbCd)", "plan: pro", "BUCKET", "global", "plan:pro", "10s", "GET /a", "redis",
		"QUOTA", "RESERVED", "tickets", "1000", "412", "586", "2027-02-01T00:00:00Z", "86400s", "POST /api/v1/tickets"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), key) {
		t.Error("the table holds the key")
	}
	t.Logf("\n%s", out.String())
	out.Reset()
	errb.Reset()
	if code := budgetCmd([]string{"-admin", addr}, strings.NewReader("sk_live_OtherKeyOtherKeyOtherKey"), &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "AUTH_API_KEY_INVALID") {
		t.Errorf("bad key: exit %d, %s", code, errb.String())
	}
}

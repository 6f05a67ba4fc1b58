package supportdesk

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const jsonCT = "application/json; charset=utf-8"

// response is what a test request got back.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request to base+path and reads the whole response.
func do(t *testing.T, client *http.Client, method, url, body string, hdr map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// newTestServer starts a real listener in front of a fresh Server.
func newTestServer(t *testing.T, opts ...Option) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(New(opts...))
	t.Cleanup(ts.Close)
	return ts
}

// apiError mirrors the standard error shape, keeping track of whether
// "details" was present at all.
type apiError struct {
	Code    string               `json:"code"`
	Message string               `json:"message"`
	Details *map[string][]string `json:"details"`
}

// wantError asserts that r is the standard JSON error with the given status,
// code and details (nil meaning "details" must be absent).
func wantError(t *testing.T, r response, status int, code string, details map[string][]string) {
	t.Helper()
	if r.status != status {
		t.Errorf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != jsonCT {
		t.Errorf("Content-Type = %q, want %q", ct, jsonCT)
	}
	if cl := r.header.Get("Content-Length"); cl != fmt.Sprint(len(r.body)) {
		t.Errorf("Content-Length = %q, want %d", cl, len(r.body))
	}
	var e apiError
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, r.body)
	}
	if e.Code != code {
		t.Errorf("code = %q, want %q (body %s)", e.Code, code, r.body)
	}
	if e.Message == "" {
		t.Errorf("message is empty: %s", r.body)
	}
	switch {
	case details == nil && e.Details != nil:
		t.Errorf("details = %v, want absent", *e.Details)
	case details != nil && e.Details == nil:
		t.Errorf("details absent, want %v", details)
	case details != nil && !reflect.DeepEqual(*e.Details, details):
		t.Errorf("details = %v, want %v", *e.Details, details)
	}
}

// decode unmarshals a successful JSON response into v after checking its
// status and Content-Type.
func decode(t *testing.T, r response, status int, v any) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != jsonCT {
		t.Errorf("Content-Type = %q, want %q", ct, jsonCT)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
}

func TestHealth(t *testing.T) {
	ts := newTestServer(t)
	var got map[string]string
	decode(t, do(t, nil, "GET", ts.URL+"/api/v1/health", "", nil), http.StatusOK, &got)
	if !reflect.DeepEqual(got, map[string]string{"status": "ok"}) {
		t.Errorf("health = %v", got)
	}
}

func TestSeedData(t *testing.T) {
	ts := newTestServer(t)

	t.Run("customers sorted by externalId", func(t *testing.T) {
		var got struct{ Data []customer }
		decode(t, do(t, nil, "GET", ts.URL+"/api/v1/customers", "", nil), http.StatusOK, &got)
		if len(got.Data) != 2 {
			t.Fatalf("got %d customers, want 2: %+v", len(got.Data), got.Data)
		}
		want := []customer{
			{ExternalID: "cus_acme", Email: "contact@acme.example", Name: "ACME SARL"},
			{ExternalID: "cus_globex", Email: "support@globex.example", Name: "Globex"},
		}
		for i, c := range got.Data {
			if _, err := time.Parse(time.RFC3339, c.CreatedAt); err != nil {
				t.Errorf("customer %s createdAt %q: %v", c.ExternalID, c.CreatedAt, err)
			}
			c.CreatedAt = ""
			if c != want[i] {
				t.Errorf("customer %d = %+v, want %+v", i, c, want[i])
			}
		}
	})

	t.Run("seeded ticket", func(t *testing.T) {
		var got ticket
		decode(t, do(t, nil, "GET", ts.URL+"/api/v1/tickets/tkt_000001", "", nil), http.StatusOK, &got)
		if _, err := time.Parse(time.RFC3339, got.CreatedAt); err != nil {
			t.Errorf("createdAt %q: %v", got.CreatedAt, err)
		}
		got.CreatedAt = ""
		want := ticket{
			ID: "tkt_000001", CustomerExternalID: "cus_acme",
			Subject: "Impossible de se connecter", Message: "Le mot de passe est refusé depuis ce matin.",
			Priority: "high", Status: "open",
		}
		if got != want {
			t.Errorf("ticket = %+v, want %+v", got, want)
		}
	})

	t.Run("ticket list", func(t *testing.T) {
		var got struct{ Data []ticket }
		decode(t, do(t, nil, "GET", ts.URL+"/api/v1/tickets", "", nil), http.StatusOK, &got)
		if len(got.Data) != 1 || got.Data[0].ID != "tkt_000001" {
			t.Errorf("tickets = %+v", got.Data)
		}
	})
}

func TestCreateCustomer(t *testing.T) {
	big := `{"externalId":"cus_big","email":"big@x.example","name":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	badJSON := map[string][]string{"body": {"JSON invalide"}}
	tests := []struct {
		name    string
		body    string
		status  int
		code    string // empty for success
		details map[string][]string
	}{
		{name: "valid", body: `{"externalId":"cus_new","email":"new@x.example","name":"Nouveau"}`, status: 201},
		{name: "trims name and email", body: `{"externalId":"cus_new","email":" new@x.example ","name":" Nouveau "}`, status: 201},
		{name: "all fields missing", body: `{}`, status: 400, code: "VALIDATION_ERROR", details: map[string][]string{
			"externalId": {"Requis pour la création"},
			"email":      {"Requis pour la création"},
			"name":       {"Requis pour la création"},
		}},
		{name: "blank fields", body: `{"externalId":"cus_x","email":"  ","name":"  "}`, status: 400, code: "VALIDATION_ERROR", details: map[string][]string{
			"email": {"Requis pour la création"},
			"name":  {"Requis pour la création"},
		}},
		{name: "email without at", body: `{"externalId":"cus_x","email":"nope","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"email": {"Adresse e-mail invalide"}}},
		{name: "email nothing after at", body: `{"externalId":"cus_x","email":"a@","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"email": {"Adresse e-mail invalide"}}},
		{name: "email nothing before at", body: `{"externalId":"cus_x","email":"@b.example","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"email": {"Adresse e-mail invalide"}}},
		{name: "email two ats", body: `{"externalId":"cus_x","email":"a@b@c.example","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"email": {"Adresse e-mail invalide"}}},
		{name: "email with display name", body: `{"externalId":"cus_x","email":"Bob <bob@x.example>","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"email": {"Adresse e-mail invalide"}}},
		{name: "externalId with space", body: `{"externalId":"cus x","email":"x@x.example","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"externalId": {"Identifiant invalide"}}},
		{name: "externalId too long", body: `{"externalId":"` + strings.Repeat("a", 65) + `","email":"x@x.example","name":"N"}`, status: 400, code: "VALIDATION_ERROR",
			details: map[string][]string{"externalId": {"Identifiant invalide"}}},
		{name: "externalId of 64 chars", body: `{"externalId":"` + strings.Repeat("a", 64) + `","email":"x@x.example","name":"N"}`, status: 201},
		{name: "malformed JSON", body: `{"externalId":`, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "JSON array", body: `[]`, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "JSON null", body: `null`, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "empty body", body: ``, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "unknown field", body: `{"externalId":"cus_x","email":"x@x.example","name":"N","vip":true}`, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "wrong field type", body: `{"externalId":"cus_x","email":42,"name":"N"}`, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "trailing data", body: `{"externalId":"cus_x","email":"x@x.example","name":"N"} {}`, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "body over 1 MiB", body: big, status: 400, code: "VALIDATION_ERROR", details: badJSON},
		{name: "duplicate externalId", body: `{"externalId":"cus_acme","email":"other@x.example","name":"N"}`, status: 409, code: "CUSTOMER_ALREADY_EXISTS"},
		{name: "duplicate email other case", body: `{"externalId":"cus_x","email":"CONTACT@Acme.Example","name":"N"}`, status: 409, code: "CUSTOMER_EMAIL_EXISTS",
			details: map[string][]string{"email": {"Déjà utilisée par un autre client"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t)
			r := do(t, nil, "POST", ts.URL+"/api/v1/customers", tc.body, nil)
			if tc.code != "" {
				wantError(t, r, tc.status, tc.code, tc.details)
				return
			}
			var in createCustomerRequest
			if err := json.Unmarshal([]byte(tc.body), &in); err != nil {
				t.Fatal(err)
			}
			var got customer
			decode(t, r, tc.status, &got)
			if got.ExternalID != in.ExternalID || got.Email != strings.TrimSpace(in.Email) || got.Name != strings.TrimSpace(in.Name) {
				t.Errorf("created %+v from %+v", got, in)
			}
			if _, err := time.Parse(time.RFC3339, got.CreatedAt); err != nil {
				t.Errorf("createdAt %q: %v", got.CreatedAt, err)
			}
			if loc := r.header.Get("Location"); loc != "/api/v1/customers/"+in.ExternalID {
				t.Errorf("Location = %q", loc)
			}
			var again customer
			decode(t, do(t, nil, "GET", ts.URL+"/api/v1/customers/"+in.ExternalID, "", nil), http.StatusOK, &again)
			if again != got {
				t.Errorf("GET after create = %+v, want %+v", again, got)
			}
		})
	}
}

func TestCustomerLifecycle(t *testing.T) {
	ts := newTestServer(t)
	base := ts.URL + "/api/v1/customers"
	r := do(t, nil, "POST", base, `{"externalId":"cus_life","email":"life@x.example","name":"Vie"}`, nil)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}

	steps := []struct {
		name, method, path, body string
		status                   int
		code                     string
		details                  map[string][]string
		check                    func(t *testing.T, c customer)
	}{
		{name: "get", method: "GET", path: "/cus_life", status: 200, check: func(t *testing.T, c customer) {
			if c.Email != "life@x.example" || c.Name != "Vie" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "get unknown", method: "GET", path: "/cus_nobody", status: 404, code: "CUSTOMER_NOT_FOUND"},
		{name: "patch name", method: "PATCH", path: "/cus_life", body: `{"name":"Vie 2"}`, status: 200, check: func(t *testing.T, c customer) {
			if c.Name != "Vie 2" || c.Email != "life@x.example" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "patch email taken by another customer, other case", method: "PATCH", path: "/cus_life", body: `{"email":"SUPPORT@globex.example"}`,
			status: 409, code: "CUSTOMER_EMAIL_EXISTS", details: map[string][]string{"email": {"Déjà utilisée par un autre client"}}},
		{name: "patch own email other case", method: "PATCH", path: "/cus_life", body: `{"email":"LIFE@x.example"}`, status: 200, check: func(t *testing.T, c customer) {
			if c.Email != "LIFE@x.example" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "patch invalid email", method: "PATCH", path: "/cus_life", body: `{"email":"not-an-email"}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"email": {"Adresse e-mail invalide"}}},
		{name: "patch empty fields", method: "PATCH", path: "/cus_life", body: `{"email":"","name":" "}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"email": {"Ne peut pas être vide"}, "name": {"Ne peut pas être vide"}}},
		{name: "patch unknown field", method: "PATCH", path: "/cus_life", body: `{"externalId":"cus_other"}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"body": {"JSON invalide"}}},
		{name: "patch nothing", method: "PATCH", path: "/cus_life", body: `{}`, status: 200, check: func(t *testing.T, c customer) {
			if c.Name != "Vie 2" || c.Email != "LIFE@x.example" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "patch unknown customer", method: "PATCH", path: "/cus_nobody", body: `{"name":"X"}`, status: 404, code: "CUSTOMER_NOT_FOUND"},
		{name: "delete", method: "DELETE", path: "/cus_life", status: 204},
		{name: "get after delete", method: "GET", path: "/cus_life", status: 404, code: "CUSTOMER_NOT_FOUND"},
		{name: "delete again", method: "DELETE", path: "/cus_life", status: 404, code: "CUSTOMER_NOT_FOUND"},
		{name: "email free again after delete", method: "PATCH", path: "/cus_acme", body: `{"email":"life@x.example"}`, status: 200, check: func(t *testing.T, c customer) {
			if c.Email != "life@x.example" || c.ExternalID != "cus_acme" {
				t.Errorf("got %+v", c)
			}
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r := do(t, nil, st.method, base+st.path, st.body, nil)
			switch {
			case st.code != "":
				wantError(t, r, st.status, st.code, st.details)
			case st.status == http.StatusNoContent:
				if r.status != st.status || len(r.body) != 0 {
					t.Errorf("got %d with body %q, want 204 without body", r.status, r.body)
				}
			default:
				var c customer
				decode(t, r, st.status, &c)
				st.check(t, c)
			}
		})
	}
}

func TestTickets(t *testing.T) {
	ts := newTestServer(t)
	base := ts.URL + "/api/v1/tickets"

	t.Run("create is sequential with default priority", func(t *testing.T) {
		for i, want := range []string{"tkt_000002", "tkt_000003"} {
			body := fmt.Sprintf(`{"customerExternalId":"cus_globex","subject":"Sujet %d","message":"Message %d"}`, i, i)
			r := do(t, nil, "POST", base, body, nil)
			var got ticket
			decode(t, r, http.StatusCreated, &got)
			if got.ID != want || got.Priority != "normal" || got.Status != "open" || got.CustomerExternalID != "cus_globex" ||
				got.Subject != fmt.Sprintf("Sujet %d", i) || got.Message != fmt.Sprintf("Message %d", i) {
				t.Errorf("created %+v, want id %s", got, want)
			}
			if _, err := time.Parse(time.RFC3339, got.CreatedAt); err != nil {
				t.Errorf("createdAt %q: %v", got.CreatedAt, err)
			}
			if loc := r.header.Get("Location"); loc != "/api/v1/tickets/"+want {
				t.Errorf("Location = %q", loc)
			}
		}
	})

	t.Run("explicit priority", func(t *testing.T) {
		var got ticket
		decode(t, do(t, nil, "POST", base, `{"customerExternalId":"cus_acme","subject":"S","message":"M","priority":"low"}`, nil), http.StatusCreated, &got)
		if got.ID != "tkt_000004" || got.Priority != "low" {
			t.Errorf("created %+v", got)
		}
	})

	errorCases := []struct {
		name, method, path, body string
		status                   int
		code                     string
		details                  map[string][]string
	}{
		{name: "create missing fields", method: "POST", body: `{}`, status: 400, code: "VALIDATION_ERROR", details: map[string][]string{
			"customerExternalId": {"Requis pour la création"},
			"subject":            {"Requis pour la création"},
			"message":            {"Requis pour la création"},
		}},
		{name: "create bad priority", method: "POST", body: `{"customerExternalId":"cus_acme","subject":"S","message":"M","priority":"urgent"}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"priority": {"Valeur invalide"}}},
		{name: "create bad customer id", method: "POST", body: `{"customerExternalId":"cus acme","subject":"S","message":"M"}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"customerExternalId": {"Identifiant invalide"}}},
		{name: "create invalid JSON", method: "POST", body: `{"subject":`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"body": {"JSON invalide"}}},
		{name: "create unknown field", method: "POST", body: `{"customerExternalId":"cus_acme","subject":"S","message":"M","status":"closed"}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"body": {"JSON invalide"}}},
		{name: "create unknown customer", method: "POST", body: `{"customerExternalId":"cus_nobody","subject":"S","message":"M"}`,
			status: 404, code: "CUSTOMER_NOT_FOUND"},
		{name: "get unknown", method: "GET", path: "/tkt_999999", status: 404, code: "TICKET_NOT_FOUND"},
		{name: "patch unknown", method: "PATCH", path: "/tkt_999999", body: `{"status":"closed"}`, status: 404, code: "TICKET_NOT_FOUND"},
		{name: "patch bad status", method: "PATCH", path: "/tkt_000001", body: `{"status":"done"}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"status": {"Valeur invalide"}}},
		{name: "patch missing status", method: "PATCH", path: "/tkt_000001", body: `{}`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"status": {"Requis pour la mise à jour"}}},
		{name: "patch invalid JSON", method: "PATCH", path: "/tkt_000001", body: `"closed"`,
			status: 400, code: "VALIDATION_ERROR", details: map[string][]string{"body": {"JSON invalide"}}},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, do(t, nil, tc.method, base+tc.path, tc.body, nil), tc.status, tc.code, tc.details)
		})
	}

	t.Run("failed creations consume no id", func(t *testing.T) {
		var got ticket
		decode(t, do(t, nil, "POST", base, `{"customerExternalId":"cus_acme","subject":"S","message":"M","priority":"high"}`, nil), http.StatusCreated, &got)
		if got.ID != "tkt_000005" {
			t.Errorf("id = %s, want tkt_000005", got.ID)
		}
	})

	for _, status := range []string{"pending", "closed", "open"} {
		t.Run("patch status "+status, func(t *testing.T) {
			var got ticket
			decode(t, do(t, nil, "PATCH", base+"/tkt_000002", `{"status":"`+status+`"}`, nil), http.StatusOK, &got)
			if got.ID != "tkt_000002" || got.Status != status || got.Subject != "Sujet 0" {
				t.Errorf("patched %+v", got)
			}
			var again ticket
			decode(t, do(t, nil, "GET", base+"/tkt_000002", "", nil), http.StatusOK, &again)
			if again != got {
				t.Errorf("GET after PATCH = %+v, want %+v", again, got)
			}
		})
	}

	listCases := []struct {
		name, query string
		want        []string
	}{
		{name: "all sorted by id", query: "", want: []string{"tkt_000001", "tkt_000002", "tkt_000003", "tkt_000004", "tkt_000005"}},
		{name: "filter acme", query: "?customerExternalId=cus_acme", want: []string{"tkt_000001", "tkt_000004", "tkt_000005"}},
		{name: "filter globex", query: "?customerExternalId=cus_globex", want: []string{"tkt_000002", "tkt_000003"}},
		{name: "filter unknown gives empty array", query: "?customerExternalId=cus_nobody", want: []string{}},
	}
	for _, tc := range listCases {
		t.Run("list "+tc.name, func(t *testing.T) {
			r := do(t, nil, "GET", base+tc.query, "", nil)
			var got struct{ Data []ticket }
			decode(t, r, http.StatusOK, &got)
			if got.Data == nil {
				t.Fatalf("data is null or missing: %s", r.body)
			}
			ids := []string{}
			for _, tk := range got.Data {
				ids = append(ids, tk.ID)
			}
			if !reflect.DeepEqual(ids, tc.want) {
				t.Errorf("ids = %v, want %v", ids, tc.want)
			}
		})
	}
}

func TestTicketQuota(t *testing.T) {
	body := `{"customerExternalId":"cus_acme","subject":"S","message":"M"}`
	tests := []struct {
		name    string
		quota   int
		created int // successful creations expected before the 403
	}{
		{name: "quota 2 leaves room for one after the seed", quota: 2, created: 1},
		{name: "quota 1 is used up by the seed", quota: 1, created: 0},
		{name: "quota 0", quota: 0, created: 0},
		{name: "negative quota behaves as 0", quota: -5, created: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, WithTicketQuota(tc.quota))
			for i := range tc.created {
				var got ticket
				decode(t, do(t, nil, "POST", ts.URL+"/api/v1/tickets", body, nil), http.StatusCreated, &got)
				if want := ticketID(i + 2); got.ID != want {
					t.Errorf("id = %s, want %s", got.ID, want)
				}
			}
			for range 2 {
				wantError(t, do(t, nil, "POST", ts.URL+"/api/v1/tickets", body, nil), http.StatusForbidden, "PLAN_LIMIT_REACHED", nil)
			}
			// Reads and updates still work once the quota is reached.
			var tk ticket
			decode(t, do(t, nil, "PATCH", ts.URL+"/api/v1/tickets/tkt_000001", `{"status":"closed"}`, nil), http.StatusOK, &tk)
		})
	}

	t.Run("default quota is 1000", func(t *testing.T) {
		if s := New(); s.quota != 1000 {
			t.Errorf("quota = %d", s.quota)
		}
	})
}

func TestRouting(t *testing.T) {
	ts := newTestServer(t)
	tests := []struct {
		name, method, path string
		status             int
		code               string
		allow              string
	}{
		{name: "unknown path", method: "GET", path: "/api/v1/nope", status: 404, code: "NOT_FOUND"},
		{name: "root", method: "GET", path: "/", status: 404, code: "NOT_FOUND"},
		{name: "outside api", method: "POST", path: "/customers", status: 404, code: "NOT_FOUND"},
		{name: "trailing slash", method: "GET", path: "/api/v1/customers/", status: 404, code: "NOT_FOUND"},
		{name: "too deep", method: "GET", path: "/api/v1/customers/cus_acme/tickets", status: 404, code: "NOT_FOUND"},
		{name: "wrong method on health", method: "DELETE", path: "/api/v1/health", status: 405, code: "METHOD_NOT_ALLOWED", allow: "GET, HEAD"},
		{name: "wrong method on customers", method: "PUT", path: "/api/v1/customers", status: 405, code: "METHOD_NOT_ALLOWED", allow: "GET, HEAD, POST"},
		{name: "wrong method on one customer", method: "POST", path: "/api/v1/customers/cus_acme", status: 405, code: "METHOD_NOT_ALLOWED", allow: "DELETE, GET, HEAD, PATCH"},
		{name: "wrong method on one ticket", method: "DELETE", path: "/api/v1/tickets/tkt_000001", status: 405, code: "METHOD_NOT_ALLOWED", allow: "GET, HEAD, PATCH"},
		{name: "wrong method on debug crash", method: "POST", path: "/api/v1/debug/crash", status: 405, code: "METHOD_NOT_ALLOWED", allow: "GET, HEAD"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, nil, tc.method, ts.URL+tc.path, "", nil)
			wantError(t, r, tc.status, tc.code, nil)
			if got := r.header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow = %q, want %q", got, tc.allow)
			}
			if strings.Contains(string(r.body), "details") {
				t.Errorf("body has details: %s", r.body)
			}
		})
	}
}

func TestDebugCrash(t *testing.T) {
	ts := newTestServer(t)
	r := do(t, nil, "GET", ts.URL+"/api/v1/debug/crash", "", nil)
	if r.status != http.StatusInternalServerError {
		t.Errorf("status = %d", r.status)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/html" {
		t.Errorf("Content-Type = %q", ct)
	}
	want := "<html><body><h1>500 Internal Server Error</h1><pre>panic: runtime error: index out of range [3] with length 3\n\ngoroutine 1 [running]:\nmain.handler(...)</pre></body></html>"
	if string(r.body) != want {
		t.Errorf("body = %q", r.body)
	}
}

func TestDebugStatus(t *testing.T) {
	ts := newTestServer(t)
	tests := []struct {
		name, code string
		status     int
	}{
		{name: "teapot", code: "418", status: 418},
		{name: "lowest", code: "400", status: 400},
		{name: "unavailable", code: "503", status: 503},
		{name: "highest", code: "599", status: 599},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, nil, "GET", ts.URL+"/api/v1/debug/status/"+tc.code, "", nil)
			if r.status != tc.status {
				t.Errorf("status = %d, want %d", r.status, tc.status)
			}
			if ct := r.header.Get("Content-Type"); ct != "text/plain" {
				t.Errorf("Content-Type = %q", ct)
			}
			if want := "upstream says " + tc.code; string(r.body) != want {
				t.Errorf("body = %q, want %q", r.body, want)
			}
		})
	}
	for _, bad := range []string{"200", "399", "600", "abc", "-418"} {
		t.Run("rejects "+bad, func(t *testing.T) {
			wantError(t, do(t, nil, "GET", ts.URL+"/api/v1/debug/status/"+bad, "", nil),
				http.StatusBadRequest, "VALIDATION_ERROR", map[string][]string{"code": {"Valeur invalide"}})
		})
	}
}

func TestDebugSlow(t *testing.T) {
	ts := newTestServer(t)
	tests := []struct {
		name, query string
		status      int
		slept       int
	}{
		{name: "no parameter", query: "", status: 200, slept: 0},
		{name: "short sleep", query: "?ms=30", status: 200, slept: 30},
		{name: "negative", query: "?ms=-1", status: 400},
		{name: "too long", query: "?ms=60001", status: 400},
		{name: "not a number", query: "?ms=soon", status: 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r := do(t, nil, "GET", ts.URL+"/api/v1/debug/slow"+tc.query, "", nil)
			if tc.status != http.StatusOK {
				wantError(t, r, tc.status, "VALIDATION_ERROR", map[string][]string{"ms": {"Valeur invalide"}})
				return
			}
			var got map[string]int
			decode(t, r, tc.status, &got)
			if got["sleptMs"] != tc.slept || len(got) != 1 {
				t.Errorf("body = %s", r.body)
			}
			if elapsed := time.Since(start); elapsed < time.Duration(tc.slept)*time.Millisecond {
				t.Errorf("answered after %v, want at least %dms", elapsed, tc.slept)
			}
		})
	}
}

// TestDebugSlowCancellation checks that the slow endpoint stops waiting
// as soon as its client goes away.
func TestDebugSlowCancellation(t *testing.T) {
	s := New()
	started := make(chan struct{})
	exited := make(chan bool, 1)
	s.onSlowStart = func() { close(started) }
	s.onSlowExit = func(completed bool) { exited <- completed }
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/api/v1/debug/slow?ms=5000", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler never started")
	}
	start := time.Now()
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("request succeeded after its context was cancelled")
	}
	select {
	case completed := <-exited:
		if completed {
			t.Error("handler slept the full delay despite cancellation")
		}
	case <-time.After(4 * time.Second):
		t.Fatal("handler did not exit within 4s after the client went away (it sleeps 5s otherwise)")
	}
	if elapsed := time.Since(start); elapsed > 4*time.Second {
		t.Errorf("handler exited after %v", elapsed)
	}
}

func TestDebugHeaders(t *testing.T) {
	ts := newTestServer(t)
	r := do(t, nil, "GET", ts.URL+"/api/v1/debug/headers?a=1&b=two", "", map[string]string{
		"X-Request-Id":    "req-123",
		"X-Forwarded-For": "203.0.113.7",
	})
	var got map[string]json.RawMessage
	decode(t, r, http.StatusOK, &got)

	stringField := func(key string) string {
		var s string
		if err := json.Unmarshal(got[key], &s); err != nil {
			t.Errorf("%s: %v (%s)", key, err, got[key])
		}
		return s
	}
	headerField := func(key string) []string {
		var v []string
		if err := json.Unmarshal(got[key], &v); err != nil {
			t.Errorf("%s: %v (%s)", key, err, got[key])
		}
		return v
	}

	if v := headerField("X-Request-Id"); !reflect.DeepEqual(v, []string{"req-123"}) {
		t.Errorf("X-Request-Id = %v", v)
	}
	if v := headerField("X-Forwarded-For"); !reflect.DeepEqual(v, []string{"203.0.113.7"}) {
		t.Errorf("X-Forwarded-For = %v", v)
	}
	if v := headerField("User-Agent"); len(v) != 1 || v[0] == "" {
		t.Errorf("User-Agent = %v", v)
	}
	if v := stringField("path"); v != "/api/v1/debug/headers" {
		t.Errorf("path = %q", v)
	}
	if v := stringField("rawQuery"); v != "a=1&b=two" {
		t.Errorf("rawQuery = %q", v)
	}
	if v := stringField("host"); v != strings.TrimPrefix(ts.URL, "http://") {
		t.Errorf("host = %q, want %q", v, strings.TrimPrefix(ts.URL, "http://"))
	}
	if v := stringField("remoteAddr"); !strings.HasPrefix(v, "127.0.0.1:") {
		t.Errorf("remoteAddr = %q", v)
	}
}

func TestConcurrentTicketCreation(t *testing.T) {
	ts := newTestServer(t)
	const n = 50
	ids := make(chan string, n)
	errs := make(chan error, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"customerExternalId":"cus_acme","subject":"Concurrent %d","message":"M"}`, i)
			resp, err := http.Post(ts.URL+"/api/v1/tickets", "application/json", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			var tk ticket
			if err := json.NewDecoder(resp.Body).Decode(&tk); err != nil || resp.StatusCode != http.StatusCreated {
				errs <- fmt.Errorf("status %d, decode error %v", resp.StatusCode, err)
				return
			}
			ids <- tk.ID
		}()
		// Concurrent readers, so -race sees reads against writes.
		go func() {
			defer wg.Done()
			resp, err := http.Get(ts.URL + "/api/v1/tickets?customerExternalId=cus_acme")
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("list status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(ids)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Errorf("duplicate id %s", id)
		}
		seen[id] = true
	}
	if len(seen) != n {
		t.Fatalf("got %d distinct ids, want %d", len(seen), n)
	}
	for i := 2; i <= n+1; i++ {
		if !seen[ticketID(i)] {
			t.Errorf("missing id %s", ticketID(i))
		}
	}

	var list struct{ Data []ticket }
	decode(t, do(t, nil, "GET", ts.URL+"/api/v1/tickets", "", nil), http.StatusOK, &list)
	if len(list.Data) != n+1 {
		t.Errorf("list has %d tickets, want %d", len(list.Data), n+1)
	}
	for i, tk := range list.Data {
		if tk.ID != ticketID(i+1) {
			t.Errorf("list[%d].id = %s, want %s", i, tk.ID, ticketID(i+1))
		}
	}
}

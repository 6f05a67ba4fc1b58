package apierror

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// specCodes is the code tables of SPEC §1 (own: true) and §2, written out
// from the SPEC text. The §2-only codes have no status in the SPEC table;
// their status is the one §2 maps to them (BAD_REQUEST: "other 4xx", 400).
var specCodes = []struct {
	code    Code
	status  int
	message string
	own     bool
}{
	{"AUTH_API_KEY_MISSING", 401, "Clé API manquante", true},
	{"AUTH_API_KEY_INVALID", 401, "Clé API invalide", true},
	{"AUTH_API_KEY_FORBIDDEN", 403, "Clé publique non autorisée sur cette route", true},
	{"TOO_MANY_REQUESTS", 429, "Trop de requêtes, veuillez réessayer plus tard", true},
	{"PLAN_LIMIT_REACHED", 403, "Quota mensuel atteint pour votre offre", true},
	{"NOT_FOUND", 404, "Ressource introuvable", true},
	{"METHOD_NOT_ALLOWED", 405, "Méthode non autorisée", true},
	{"PAYLOAD_TOO_LARGE", 413, "Requête trop volumineuse", true},
	{"BAD_GATEWAY", 502, "Service temporairement indisponible", true},
	{"SERVICE_UNAVAILABLE", 503, "Service temporairement indisponible", true},
	{"GATEWAY_TIMEOUT", 504, "Le service n'a pas répondu à temps", true},
	{"INTERNAL_ERROR", 500, "Erreur interne du serveur", true},
	{"VALIDATION_ERROR", 400, "Requête invalide", false},
	{"FORBIDDEN", 403, "Accès refusé", false},
	{"CONFLICT", 409, "Conflit", false},
	{"BAD_REQUEST", 400, "Requête incorrecte", true},
	{"REQUEST_TIMEOUT", 408, "Délai de requête dépassé", true},
	// Beyond the SPEC tables, for issue 8: net/http's own 431, shaped.
	{"REQUEST_HEADERS_TOO_LARGE", 431, "En-têtes de requête trop volumineux", true},
}

func newCatalog(t *testing.T, overrides map[string]string) *Catalog {
	t.Helper()
	c, err := NewCatalog(overrides)
	if err != nil {
		t.Fatalf("NewCatalog(%v): %v", overrides, err)
	}
	return c
}

// TestSpecCodes guards the tables of SPEC §1 and §2: every code's HTTP
// status and exact French default message, as rendered on the wire.
func TestSpecCodes(t *testing.T) {
	c := newCatalog(t, nil)
	for _, tt := range specCodes {
		t.Run(string(tt.code), func(t *testing.T) {
			if !Known(tt.code) {
				t.Fatalf("Known(%s) = false", tt.code)
			}
			if got := DefaultMessage(tt.code); got != tt.message {
				t.Errorf("DefaultMessage = %q, want %q", got, tt.message)
			}
			if got := c.Message(tt.code); got != tt.message {
				t.Errorf("Catalog.Message = %q, want %q", got, tt.message)
			}
			if got := New(tt.code, nil).HTTPStatus(); got != tt.status {
				t.Errorf("HTTPStatus = %d, want %d", got, tt.status)
			}
			if got := slices.Contains(Own, tt.code); got != tt.own {
				t.Errorf("code in Own = %v, want %v (SPEC §1 table)", got, tt.own)
			}

			rec := httptest.NewRecorder()
			c.Write(rec, httptest.NewRequest(http.MethodGet, "/", nil), &Error{Code: tt.code})
			if rec.Code != tt.status {
				t.Errorf("written status = %d, want %d", rec.Code, tt.status)
			}
			var body struct{ Code, Message string }
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if body.Code != string(tt.code) || body.Message != tt.message {
				t.Errorf("body = %q, want code %s and message %q", rec.Body, tt.code, tt.message)
			}
		})
	}
}

// TestCodesComplete guards SPEC §1/§2: the package knows exactly the SPEC's
// codes (and the one addition docs/reference.md documents), and Own is exactly the §1
// table plus the malformed-request answers (BAD_REQUEST, 431).
func TestCodesComplete(t *testing.T) {
	var want, wantOwn []Code
	for _, c := range specCodes {
		want = append(want, c.code)
		if c.own {
			wantOwn = append(wantOwn, c.code)
		}
	}
	slices.Sort(want)
	if got := Codes(); !slices.Equal(got, want) {
		t.Errorf("Codes() = %v, want %v", got, want)
	}
	own := slices.Clone(Own)
	slices.Sort(own)
	slices.Sort(wantOwn)
	if !slices.Equal(own, wantOwn) {
		t.Errorf("Own = %v, want %v", own, wantOwn)
	}
	for _, c := range []Code{"", "OK", "not_found", "Not_Found"} {
		if Known(c) {
			t.Errorf("Known(%q) = true, want false", c)
		}
		if m := DefaultMessage(c); m != "" {
			t.Errorf("DefaultMessage(%q) = %q, want empty", c, m)
		}
	}
}

// TestCatalogWrite guards SPEC §1's wire format: status, `Content-Type:
// application/json; charset=utf-8`, a correct Content-Length, details
// omitted when empty, no body for HEAD, and headers set before (e.g.
// Retry-After, Allow) kept.
func TestCatalogWrite(t *testing.T) {
	const rl429 = `{"code":"TOO_MANY_REQUESTS","message":"Trop de requêtes, veuillez réessayer plus tard","details":{"limit":3,"window_seconds":1,"retry_after_seconds":1}}`
	tests := []struct {
		name       string
		method     string
		preset     http.Header
		err        *Error
		wantStatus int
		wantBody   string // the body a GET gets
		wantHeader http.Header
		noHeader   []string
	}{
		{
			name:       "missing key, no details",
			method:     http.MethodGet,
			err:        ErrKeyMissing,
			wantStatus: 401,
			wantBody:   `{"code":"AUTH_API_KEY_MISSING","message":"Clé API manquante"}`,
		},
		{
			name:       "empty details are omitted",
			method:     http.MethodPost,
			err:        &Error{Code: NotFound, Details: []byte{}},
			wantStatus: 404,
			wantBody:   `{"code":"NOT_FOUND","message":"Ressource introuvable"}`,
		},
		{
			name:       "429 with details and Retry-After",
			method:     http.MethodGet,
			preset:     http.Header{"Retry-After": {"1"}},
			err:        &Error{Code: TooManyRequests, Details: []byte(`{"limit":3,"window_seconds":1,"retry_after_seconds":1}`)},
			wantStatus: 429,
			wantBody:   rl429,
			wantHeader: http.Header{"Retry-After": {"1"}},
		},
		{
			name:       "HEAD gets status and headers, no body",
			method:     http.MethodHead,
			preset:     http.Header{"Retry-After": {"7"}},
			err:        &Error{Code: TooManyRequests, Details: []byte(`{"limit":3,"window_seconds":1,"retry_after_seconds":1}`)},
			wantStatus: 429,
			wantBody:   rl429,
			wantHeader: http.Header{"Retry-After": {"7"}},
		},
		{
			name:       "HEAD without details",
			method:     http.MethodHead,
			err:        ErrNotFound,
			wantStatus: 404,
			wantBody:   `{"code":"NOT_FOUND","message":"Ressource introuvable"}`,
		},
		{
			name:       "405 keeps Allow and X-Request-Id",
			method:     http.MethodDelete,
			preset:     http.Header{"Allow": {"GET, HEAD"}, "X-Request-Id": {"req-1"}},
			err:        ErrMethodNotAllowed,
			wantStatus: 405,
			wantBody:   `{"code":"METHOD_NOT_ALLOWED","message":"Méthode non autorisée"}`,
			wantHeader: http.Header{"Allow": {"GET, HEAD"}, "X-Request-Id": {"req-1"}},
		},
		{
			name:       "replaces a prepared content type, length and encoding",
			method:     http.MethodGet,
			preset:     http.Header{"Content-Type": {"text/html"}, "Content-Length": {"9999"}, "Content-Encoding": {"gzip"}},
			err:        ErrBadGateway,
			wantStatus: 502,
			wantBody:   `{"code":"BAD_GATEWAY","message":"Service temporairement indisponible"}`,
			noHeader:   []string{"Content-Encoding"},
		},
		{
			name:       "explicit status is kept",
			method:     http.MethodGet,
			err:        &Error{Code: Validation, Status: 422, Details: []byte(`{"email":["Requis pour la création"]}`)},
			wantStatus: 422,
			wantBody:   `{"code":"VALIDATION_ERROR","message":"Requête invalide","details":{"email":["Requis pour la création"]}}`,
		},
		{
			name:       "unknown code is an internal error",
			method:     http.MethodGet,
			err:        &Error{Code: "NO_SUCH_CODE"},
			wantStatus: 500,
			wantBody:   `{"code":"INTERNAL_ERROR","message":"Erreur interne du serveur"}`,
		},
	}
	c := newCatalog(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			for k, v := range tt.preset {
				rec.Header()[k] = v
			}
			c.Write(rec, httptest.NewRequest(tt.method, "/api/v1/x", nil), tt.err)
			res := rec.Result()
			if res.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", res.StatusCode, tt.wantStatus)
			}
			if got := res.Header.Values("Content-Type"); !slices.Equal(got, []string{"application/json; charset=utf-8"}) {
				t.Errorf("Content-Type = %q, want [application/json; charset=utf-8]", got)
			}
			if got, want := res.Header.Values("Content-Length"), []string{strconv.Itoa(len(tt.wantBody))}; !slices.Equal(got, want) {
				t.Errorf("Content-Length = %q, want %q", got, want)
			}
			for k, want := range tt.wantHeader {
				if got := res.Header.Values(k); !slices.Equal(got, want) {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			for _, k := range tt.noHeader {
				if got := res.Header.Values(k); len(got) > 0 {
					t.Errorf("%s = %q, want absent", k, got)
				}
			}
			body, _ := io.ReadAll(res.Body)
			wantBody := tt.wantBody
			if tt.method == http.MethodHead {
				wantBody = ""
			}
			if string(body) != wantBody {
				t.Errorf("body = %s\nwant   %s", body, wantBody)
			}
			if tt.method != http.MethodHead {
				if !json.Valid(body) {
					t.Errorf("body %s is not valid JSON", body)
				}
				if !Conforms(body) {
					t.Errorf("body %s does not conform to the standard shape", body)
				}
			}
			if got := string(c.Body(tt.err)); got != tt.wantBody {
				t.Errorf("Body() = %s, want %s", got, tt.wantBody)
			}
		})
	}
}

// TestCatalogWriteNilRequest guards SPEC §1: without a request (no HEAD to
// honour) the body is written.
func TestCatalogWriteNilRequest(t *testing.T) {
	rec := httptest.NewRecorder()
	newCatalog(t, nil).Write(rec, nil, ErrInternal)
	if got, want := rec.Body.String(), `{"code":"INTERNAL_ERROR","message":"Erreur interne du serveur"}`; got != want {
		t.Errorf("body = %s, want %s", got, want)
	}
}

// TestCatalogWriteRepeatable guards SPEC §1 under reuse: the shared,
// pre-rendered parts are not altered by one write, so every write of a code
// gives the same bytes and headers.
func TestCatalogWriteRepeatable(t *testing.T) {
	c := newCatalog(t, nil)
	want := `{"code":"AUTH_API_KEY_INVALID","message":"Clé API invalide"}`
	for i := range 3 {
		rec := httptest.NewRecorder()
		c.Write(rec, httptest.NewRequest(http.MethodGet, "/", nil), ErrKeyInvalid)
		// A later handler adding to the headers must not leak into the next
		// response.
		rec.Header().Add("Content-Type", "text/plain")
		rec.Header().Add("Content-Length", "1")
		if got := rec.Body.String(); got != want {
			t.Fatalf("write %d: body = %s, want %s", i, got, want)
		}
		if got := rec.Result().Header.Values("Content-Length"); !slices.Equal(got, []string{strconv.Itoa(len(want))}) {
			t.Fatalf("write %d: Content-Length = %q, want [%d]", i, got, len(want))
		}
	}
}

// TestNewCatalogOverrides guards SPEC §1 "message: ... configurable per
// code (`messages:` in the config)": an override changes that code's
// message only; an override for an unknown code is an error; any message
// stays valid JSON, without HTML escaping.
func TestNewCatalogOverrides(t *testing.T) {
	tests := []struct {
		name      string
		overrides map[string]string
		code      Code
		wantMsg   string
		wantBody  string // "" to skip the exact body check
		wantErr   bool
	}{
		{
			name:      "override",
			overrides: map[string]string{"TOO_MANY_REQUESTS": "Doucement"},
			code:      TooManyRequests,
			wantMsg:   "Doucement",
			wantBody:  `{"code":"TOO_MANY_REQUESTS","message":"Doucement"}`,
		},
		{
			name:      "other codes keep their default",
			overrides: map[string]string{"TOO_MANY_REQUESTS": "Doucement"},
			code:      NotFound,
			wantMsg:   "Ressource introuvable",
		},
		{
			name:      "quotes, angle brackets and accents",
			overrides: map[string]string{"NOT_FOUND": `Rien à voir ici: "<b>" & 'ça' \ fin`},
			code:      NotFound,
			wantMsg:   `Rien à voir ici: "<b>" & 'ça' \ fin`,
			wantBody:  `{"code":"NOT_FOUND","message":"Rien à voir ici: \"<b>\" & 'ça' \\ fin"}`,
		},
		{
			name:      "control characters and a line separator",
			overrides: map[string]string{"FORBIDDEN": "Ligne 1\nLigne 2\t\u2028fin"},
			code:      Forbidden,
			wantMsg:   "Ligne 1\nLigne 2\t\u2028fin",
		},
		{
			name:      "unknown code",
			overrides: map[string]string{"RATE_LIMITED": "Trop vite"},
			wantErr:   true,
		},
		{
			name:      "known code in the wrong case",
			overrides: map[string]string{"not_found": "x"},
			wantErr:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewCatalog(tt.overrides)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewCatalog(%v) = %v, nil; want an error", tt.overrides, c)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewCatalog(%v): %v", tt.overrides, err)
			}
			if got := c.Message(tt.code); got != tt.wantMsg {
				t.Errorf("Message(%s) = %q, want %q", tt.code, got, tt.wantMsg)
			}
			rec := httptest.NewRecorder()
			c.Write(rec, httptest.NewRequest(http.MethodGet, "/", nil), New(tt.code, nil))
			body := rec.Body.Bytes()
			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("body = %s, want %s", body, tt.wantBody)
			}
			var got struct{ Code, Message string }
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %s is not valid JSON: %v", body, err)
			}
			if got.Code != string(tt.code) || got.Message != tt.wantMsg {
				t.Errorf("decoded body = %+v, want code %s message %q", got, tt.code, tt.wantMsg)
			}
			for _, esc := range []string{`\u003c`, `\u003e`, `\u0026`} {
				if strings.Contains(string(body), esc) {
					t.Errorf("body %s is HTML-escaped (%s)", body, esc)
				}
			}
			if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length = %s, want %d", cl, len(body))
			}
		})
	}
}

// TestConforms guards SPEC §2: an upstream error body passes through only
// if it is one JSON object with a string "code", a string "message" and, if
// present, an object "details" (keys matched exactly, nothing after it).
func TestConforms(t *testing.T) {
	for _, tt := range conformsCases {
		t.Run(tt.name, func(t *testing.T) {
			if got := Conforms([]byte(tt.body)); got != tt.want {
				t.Errorf("Conforms(%q) = %v, want %v", tt.body, got, tt.want)
			}
		})
	}
}

// conformsCases is the Conforms table; FuzzConforms is seeded from it.
var conformsCases = []struct {
	name string
	body string
	want bool
}{
	{"code and message", `{"code":"VALIDATION_ERROR","message":"Requête invalide"}`, true},
	{"with details", `{"code":"VALIDATION_ERROR","message":"Requête invalide","details":{"email":["Requis pour la création"]}}`, true},
	{"empty details object", `{"code":"X","message":"y","details":{}}`, true},
	{"keys in another order", `{"details":{"a":1},"message":"m","code":"C"}`, true},
	{"extra keys", `{"code":"X","message":"y","trace_id":"abc","status":400}`, true},
	{"empty strings", `{"code":"","message":""}`, true},
	{"leading and trailing whitespace", " \n\t{\"code\" : \"X\" ,\n \"message\" : \"y\" }\r\n ", true},
	{"escaped key", `{"\u0063ode":"X","message":"y"}`, true},
	{"details null", `{"code":"X","message":"y","details":null}`, false},
	{"details array", `{"code":"X","message":"y","details":[]}`, false},
	{"details string", `{"code":"X","message":"y","details":"oops"}`, false},
	{"code number", `{"code":400,"message":"y"}`, false},
	{"code null", `{"code":null,"message":"y"}`, false},
	{"message object", `{"code":"X","message":{"fr":"y"}}`, false},
	{"missing message", `{"code":"X"}`, false},
	{"missing code", `{"message":"y"}`, false},
	{"capitalised Code", `{"Code":"X","message":"y"}`, false},
	{"capitalised Message", `{"code":"X","Message":"y"}`, false},
	{"duplicate code, second not a string", `{"code":"X","message":"y","code":1}`, false},
	{"trailing garbage", `{"code":"X","message":"y"}garbage`, false},
	{"trailing comma", `{"code":"X","message":"y"},`, false},
	{"two objects", `{"code":"X","message":"y"}{"code":"X","message":"y"}`, false},
	{"two objects with space", `{"code":"X","message":"y"} {}`, false},
	{"object then number", `{"code":"X","message":"y"} 1`, false},
	{"array top level", `[{"code":"X","message":"y"}]`, false},
	{"string top level", `"code"`, false},
	{"null", `null`, false},
	{"empty", ``, false},
	{"only whitespace", "  \n", false},
	{"truncated", `{"code":"X","message":"y"`, false},
	{"invalid JSON", `{code:"X",message:"y"}`, false},
	{"single quotes", `{'code':'X','message':'y'}`, false},
	{"trailing comma inside", `{"code":"X","message":"y",}`, false},
	{"HTML", `<html><body>502 Bad Gateway</body></html>`, false},
	{"text", `Internal Server Error`, false},
	{"empty object", `{}`, false},
}

// TestStatusCode guards SPEC §2's status → code mapping of normalised
// upstream errors.
func TestStatusCode(t *testing.T) {
	tests := []struct {
		status int
		want   Code
	}{
		{400, "VALIDATION_ERROR"},
		{401, "AUTH_API_KEY_INVALID"},
		{402, "BAD_REQUEST"},
		{403, "FORBIDDEN"},
		{404, "NOT_FOUND"},
		{405, "METHOD_NOT_ALLOWED"},
		{406, "BAD_REQUEST"},
		{409, "CONFLICT"},
		{410, "BAD_REQUEST"},
		{413, "PAYLOAD_TOO_LARGE"},
		{418, "BAD_REQUEST"},
		{422, "VALIDATION_ERROR"},
		{429, "TOO_MANY_REQUESTS"},
		{451, "BAD_REQUEST"},
		{499, "BAD_REQUEST"},
		{500, "INTERNAL_ERROR"},
		{501, "INTERNAL_ERROR"},
		{502, "INTERNAL_ERROR"},
		{503, "INTERNAL_ERROR"},
		{504, "INTERNAL_ERROR"},
		{599, "INTERNAL_ERROR"},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			if got := StatusCode(tt.status); got != tt.want {
				t.Errorf("StatusCode(%d) = %s, want %s", tt.status, got, tt.want)
			}
		})
	}
}

// TestError guards SPEC §1's split between what the client sees (the code)
// and what only the log sees (the cause).
func TestError(t *testing.T) {
	cause := errors.New("dial tcp 10.0.0.1:8081: connection refused")
	tests := []struct {
		name       string
		err        *Error
		wantString string
		wantCause  error
	}{
		{"with cause", New(BadGateway, cause), "BAD_GATEWAY: dial tcp 10.0.0.1:8081: connection refused", cause},
		{"without cause", New(NotFound, nil), "NOT_FOUND", nil},
		{"sentinel", ErrKeyMissing, "AUTH_API_KEY_MISSING", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.wantString {
				t.Errorf("Error() = %q, want %q", got, tt.wantString)
			}
			if got := errors.Unwrap(tt.err); got != tt.wantCause {
				t.Errorf("Unwrap() = %v, want %v", got, tt.wantCause)
			}
			if tt.wantCause != nil && !errors.Is(tt.err, tt.wantCause) {
				t.Errorf("errors.Is(err, cause) = false")
			}
			body := string(newCatalog(t, nil).Body(tt.err))
			if tt.wantCause != nil && strings.Contains(body, tt.wantCause.Error()) {
				t.Errorf("body %s shows the cause to the client", body)
			}
		})
	}
}

// TestSentinels guards SPEC §1's codes of the shared sentinel errors.
func TestSentinels(t *testing.T) {
	tests := []struct {
		err  *Error
		want Code
	}{
		{ErrKeyMissing, "AUTH_API_KEY_MISSING"},
		{ErrKeyInvalid, "AUTH_API_KEY_INVALID"},
		{ErrKeyForbidden, "AUTH_API_KEY_FORBIDDEN"},
		{ErrNotFound, "NOT_FOUND"},
		{ErrPayloadTooLarge, "PAYLOAD_TOO_LARGE"},
		{ErrUnavailable, "SERVICE_UNAVAILABLE"},
		{ErrBadGateway, "BAD_GATEWAY"},
		{ErrGatewayTimeout, "GATEWAY_TIMEOUT"},
		{ErrInternal, "INTERNAL_ERROR"},
		{ErrMethodNotAllowed, "METHOD_NOT_ALLOWED"},
	}
	for _, tt := range tests {
		t.Run(string(tt.want), func(t *testing.T) {
			if tt.err.Code != tt.want || tt.err.Status != 0 || tt.err.Details != nil || tt.err.Cause != nil {
				t.Errorf("sentinel = %+v, want bare code %s", *tt.err, tt.want)
			}
		})
	}
}

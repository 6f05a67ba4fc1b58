// Package apierror owns deskgate's standard error shape (SPEC §1): the
// business codes, their HTTP statuses and French default messages, the
// [Error] value that inner handlers return, the [Catalog] that renders it,
// and the check that tells whether an upstream body is already in the shape
// (SPEC §2).
//
// Only the standard library is imported here, so every other package can
// depend on it.
package apierror

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
)

// Code is a stable business code that clients branch on.
type Code string

// The codes deskgate emits itself (SPEC §1) and the ones it uses when it
// normalises an upstream error (SPEC §2).
const (
	AuthKeyMissing     Code = "AUTH_API_KEY_MISSING"
	AuthKeyInvalid     Code = "AUTH_API_KEY_INVALID"
	AuthKeyForbidden   Code = "AUTH_API_KEY_FORBIDDEN"
	TooManyRequests    Code = "TOO_MANY_REQUESTS"
	PlanLimitReached   Code = "PLAN_LIMIT_REACHED"
	NotFound           Code = "NOT_FOUND"
	MethodNotAllowed   Code = "METHOD_NOT_ALLOWED"
	PayloadTooLarge    Code = "PAYLOAD_TOO_LARGE"
	BadGateway         Code = "BAD_GATEWAY"
	ServiceUnavailable Code = "SERVICE_UNAVAILABLE"
	GatewayTimeout     Code = "GATEWAY_TIMEOUT"
	Internal           Code = "INTERNAL_ERROR"
	HeadersTooLarge    Code = "REQUEST_HEADERS_TOO_LARGE"
	Validation         Code = "VALIDATION_ERROR"
	Forbidden          Code = "FORBIDDEN"
	Conflict           Code = "CONFLICT"
	BadRequest         Code = "BAD_REQUEST"
	RequestTimeout     Code = "REQUEST_TIMEOUT"
)

// def is the built-in status and French message of a code.
type def struct {
	status  int
	message string
}

var defaults = map[Code]def{
	AuthKeyMissing:     {http.StatusUnauthorized, "Clé API manquante"},
	AuthKeyInvalid:     {http.StatusUnauthorized, "Clé API invalide"},
	AuthKeyForbidden:   {http.StatusForbidden, "Clé publique non autorisée sur cette route"},
	TooManyRequests:    {http.StatusTooManyRequests, "Trop de requêtes, veuillez réessayer plus tard"},
	PlanLimitReached:   {http.StatusForbidden, "Quota mensuel atteint pour votre offre"},
	NotFound:           {http.StatusNotFound, "Ressource introuvable"},
	MethodNotAllowed:   {http.StatusMethodNotAllowed, "Méthode non autorisée"},
	PayloadTooLarge:    {http.StatusRequestEntityTooLarge, "Requête trop volumineuse"},
	BadGateway:         {http.StatusBadGateway, "Service temporairement indisponible"},
	ServiceUnavailable: {http.StatusServiceUnavailable, "Service temporairement indisponible"},
	GatewayTimeout:     {http.StatusGatewayTimeout, "Le service n'a pas répondu à temps"},
	Internal:           {http.StatusInternalServerError, "Erreur interne du serveur"},
	HeadersTooLarge:    {http.StatusRequestHeaderFieldsTooLarge, "En-têtes de requête trop volumineux"},
	Validation:         {http.StatusBadRequest, "Requête invalide"},
	Forbidden:          {http.StatusForbidden, "Accès refusé"},
	Conflict:           {http.StatusConflict, "Conflit"},
	BadRequest:         {http.StatusBadRequest, "Requête incorrecte"},
	RequestTimeout:     {http.StatusRequestTimeout, "Délai de requête dépassé"},
}

// Codes returns every known code, sorted. The config package uses it to
// refuse a `messages:` override for a code that does not exist.
func Codes() []Code {
	out := make([]Code, 0, len(defaults))
	for c := range defaults {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// Own lists the codes deskgate answers itself (SPEC §1), as opposed to
// those it only uses to normalise an upstream error.
var Own = []Code{
	AuthKeyMissing, AuthKeyInvalid, AuthKeyForbidden, TooManyRequests, PlanLimitReached,
	NotFound, MethodNotAllowed, PayloadTooLarge, BadGateway,
	ServiceUnavailable, GatewayTimeout, Internal, HeadersTooLarge, BadRequest,
	RequestTimeout,
}

// Known reports whether c is one of the codes above.
func Known(c Code) bool {
	_, ok := defaults[c]
	return ok
}

// DefaultMessage returns the built-in French message of c, or "" for an
// unknown code.
func DefaultMessage(c Code) string { return defaults[c].message }

// Error is an error answered to the client in the standard shape. The
// client sees Code, the catalog's message and Details; Cause is for the log
// only and is returned by Unwrap.
//
// Status zero means the code's default status.
type Error struct {
	Code   Code
	Status int
	// Details is a pre-encoded JSON object, or nil for none.
	Details []byte
	Cause   error
}

// New returns an Error for code with the given cause (which may be nil).
func New(code Code, cause error) *Error { return &Error{Code: code, Cause: cause} }

// Sentinel errors without details or cause, shared so that the reject path
// allocates nothing. Never mutate them.
var (
	ErrKeyMissing       = &Error{Code: AuthKeyMissing}
	ErrKeyInvalid       = &Error{Code: AuthKeyInvalid}
	ErrKeyForbidden     = &Error{Code: AuthKeyForbidden}
	ErrNotFound         = &Error{Code: NotFound}
	ErrPayloadTooLarge  = &Error{Code: PayloadTooLarge}
	ErrUnavailable      = &Error{Code: ServiceUnavailable}
	ErrBadGateway       = &Error{Code: BadGateway}
	ErrGatewayTimeout   = &Error{Code: GatewayTimeout}
	ErrInternal         = &Error{Code: Internal}
	ErrMethodNotAllowed = &Error{Code: MethodNotAllowed}
)

// Error implements error.
func (e *Error) Error() string {
	if e.Cause != nil {
		return string(e.Code) + ": " + e.Cause.Error()
	}
	return string(e.Code)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// HTTPStatus returns the status the client gets: Status, or the code's
// default.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	if d, ok := defaults[e.Code]; ok {
		return d.status
	}
	return http.StatusInternalServerError
}

// StatusCode maps an upstream error status to the code of SPEC §2.
func StatusCode(status int) Code {
	switch {
	case status == 400 || status == 422:
		return Validation
	case status == 401:
		return AuthKeyInvalid
	case status == 403:
		return Forbidden
	case status == 404:
		return NotFound
	case status == 405:
		return MethodNotAllowed
	case status == 409:
		return Conflict
	case status == 413:
		return PayloadTooLarge
	case status == 429:
		return TooManyRequests
	case status >= 500:
		return Internal
	default:
		return BadRequest
	}
}

// ContentType is the Content-Type of every error body.
const ContentType = "application/json; charset=utf-8"

var contentType = []string{ContentType}

// entry is a code's pre-rendered parts.
type entry struct {
	status  int
	message string
	// prefix is `{"code":"X","message":"Y"` without the closing brace.
	prefix []byte
	// plain is the whole body without details, and plainLen its length.
	plain    []byte
	plainLen []string
}

// Catalog renders errors with the configured messages. It is built once per
// config and is safe for concurrent use.
type Catalog struct {
	entries map[Code]*entry
}

// NewCatalog builds a catalog from the defaults and the `messages:`
// overrides. An override for an unknown code is an error.
func NewCatalog(overrides map[string]string) (*Catalog, error) {
	c := &Catalog{entries: make(map[Code]*entry, len(defaults))}
	for code, d := range defaults {
		c.entries[code] = newEntry(code, d.status, d.message)
	}
	for k, msg := range overrides {
		code := Code(k)
		d, ok := defaults[code]
		if !ok {
			return nil, fmt.Errorf("unknown error code %q", k)
		}
		c.entries[code] = newEntry(code, d.status, msg)
	}
	return c, nil
}

func newEntry(code Code, status int, message string) *entry {
	var b bytes.Buffer
	b.WriteString(`{"code":`)
	writeJSONString(&b, string(code))
	b.WriteString(`,"message":`)
	writeJSONString(&b, message)
	prefix := bytes.Clone(b.Bytes())
	b.WriteByte('}')
	plain := b.Bytes()
	return &entry{status: status, message: message, prefix: prefix, plain: plain, plainLen: []string{strconv.Itoa(len(plain))}}
}

func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	b.Truncate(b.Len() - 1)
}

func (c *Catalog) entry(code Code) *entry {
	if e, ok := c.entries[code]; ok {
		return e
	}
	return c.entries[Internal]
}

// Message returns the configured message of code.
func (c *Catalog) Message(code Code) string {
	return c.entry(code).message
}

// Body returns the JSON body of e. The slice is shared when e has no
// details: callers must not modify it.
func (c *Catalog) Body(e *Error) []byte {
	en := c.entry(e.Code)
	if len(e.Details) == 0 {
		return en.plain
	}
	body := make([]byte, 0, len(en.prefix)+len(e.Details)+13)
	body = append(body, en.prefix...)
	body = append(body, `,"details":`...)
	body = append(body, e.Details...)
	return append(body, '}')
}

// Write answers e on w: status, Content-Type, Content-Length and, unless
// the request is HEAD, the body. Headers already set on w (Retry-After,
// Allow, X-Request-Id, rate-limit headers) are kept.
func (c *Catalog) Write(w http.ResponseWriter, r *http.Request, e *Error) {
	h := w.Header()
	h["Content-Type"] = contentType
	body := c.Body(e)
	if len(e.Details) == 0 {
		h["Content-Length"] = c.entry(e.Code).plainLen
	} else {
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	// The error replaces whatever a handler may have prepared.
	delete(h, "Content-Encoding")
	w.WriteHeader(e.HTTPStatus())
	if r == nil || r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// Conforms reports whether body is already in the standard shape: one JSON
// object with a string "code", a string "message" and, if present, an
// object "details" (SPEC §2). Keys are matched exactly (encoding/json would
// also accept "Code"), and nothing may follow the object.
func Conforms(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return false
	}
	var code, message bool
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return false
		}
		key, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return false
		}
		switch key {
		case "code":
			code = raw[0] == '"'
		case "message":
			message = raw[0] == '"'
		case "details":
			if raw[0] != '{' {
				return false
			}
		default:
			continue
		}
		if (key == "code" && !code) || (key == "message" && !message) {
			return false
		}
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		return false
	}
	return code && message
}

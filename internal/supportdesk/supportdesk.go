// Package supportdesk is an in-memory imitation of the SupportDesk REST API.
//
// It is the example upstream used by the quick start and by the end-to-end
// tests: deskgate is put in front of it to show authentication, rate
// limiting, forwarding and error normalisation against a real, working API.
// Customers and tickets live in memory and are guarded by a mutex, so one
// [Server] can be shared by many concurrent requests.
//
// Every error it answers is JSON in the standard shape
//
//	{"code":"CUSTOMER_NOT_FOUND","message":"Client non trouvé"}
//
// with an optional "details" object mapping field names to lists of French
// messages. The only exceptions are the deliberately misbehaving endpoints
// under /api/v1/debug/, which exist so that the gateway's normalisation of
// non-conforming upstream errors can be demonstrated and tested.
package supportdesk

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// defaultTicketQuota is the monthly ticket quota of a [Server] built without
// [WithTicketQuota].
const defaultTicketQuota = 1000

// maxBodyBytes is the largest request body the JSON endpoints read.
const maxBodyBytes = 1 << 20

// Server is an in-memory SupportDesk API. Build it with [New]; the zero
// value is not usable.
type Server struct {
	mux *http.ServeMux
	now func() time.Time

	mu        sync.RWMutex
	customers map[string]*customer
	tickets   map[string]*ticket
	created   int // tickets created since New, seeded ones included
	quota     int

	// onSlowExit, when set (by tests), is called as the slow debug handler
	// returns; completed tells whether the full delay elapsed.
	onSlowExit func(completed bool)
	// onSlowStart, when set (by tests), is called as the slow debug
	// handler starts waiting.
	onSlowStart func()
}

// Option configures a [Server] built by [New].
type Option func(*Server)

// WithTicketQuota sets the monthly ticket quota: once n tickets have been
// created (the seeded ticket included), creating another one is refused with
// 403 PLAN_LIMIT_REACHED. A negative n is treated as zero. The demo counter
// never rolls over; it counts every ticket created since [New].
func WithTicketQuota(n int) Option {
	return func(s *Server) {
		s.quota = max(n, 0)
	}
}

// New returns a Server whose store is pre-seeded with two demo customers,
// cus_acme and cus_globex, and one open ticket, tkt_000001 for cus_acme. The
// next ticket created gets the id tkt_000002.
func New(opts ...Option) *Server {
	s := &Server{
		now:       time.Now,
		customers: make(map[string]*customer),
		tickets:   make(map[string]*ticket),
		quota:     defaultTicketQuota,
	}
	for _, opt := range opts {
		opt(s)
	}
	s.seed()
	s.routes()
	return s
}

// seed fills the store with the demo data.
func (s *Server) seed() {
	at := s.timestamp()
	s.customers["cus_acme"] = &customer{
		ExternalID: "cus_acme", Email: "contact@acme.example", Name: "ACME SARL", CreatedAt: at,
	}
	s.customers["cus_globex"] = &customer{
		ExternalID: "cus_globex", Email: "support@globex.example", Name: "Globex", CreatedAt: at,
	}
	s.created++
	s.tickets[ticketID(s.created)] = &ticket{
		ID:                 ticketID(s.created),
		CustomerExternalID: "cus_acme",
		Subject:            "Impossible de se connecter",
		Message:            "Le mot de passe est refusé depuis ce matin.",
		Priority:           "high",
		Status:             "open",
		CreatedAt:          at,
		seq:                s.created,
	}
}

// routes registers every endpoint on the internal mux.
func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /api/v1/health", s.health)

	m.HandleFunc("GET /api/v1/customers", s.listCustomers)
	m.HandleFunc("POST /api/v1/customers", s.createCustomer)
	m.HandleFunc("GET /api/v1/customers/{externalId}", s.getCustomer)
	m.HandleFunc("PATCH /api/v1/customers/{externalId}", s.updateCustomer)
	m.HandleFunc("DELETE /api/v1/customers/{externalId}", s.deleteCustomer)

	m.HandleFunc("GET /api/v1/tickets", s.listTickets)
	m.HandleFunc("POST /api/v1/tickets", s.createTicket)
	m.HandleFunc("GET /api/v1/tickets/{id}", s.getTicket)
	m.HandleFunc("PATCH /api/v1/tickets/{id}", s.updateTicket)

	m.HandleFunc("GET /api/v1/debug/crash", s.debugCrash)
	m.HandleFunc("GET /api/v1/debug/status/{code}", s.debugStatus)
	m.HandleFunc("GET /api/v1/debug/slow", s.debugSlow)
	m.HandleFunc("GET /api/v1/debug/headers", s.debugHeaders)
	s.mux = m
}

// ServeHTTP makes *Server an http.Handler serving the SupportDesk routes.
// An unknown path is answered 404 NOT_FOUND and a known path with the wrong
// method 405 METHOD_NOT_ALLOWED with an Allow header, both in the standard
// JSON shape rather than ServeMux's plain-text replies.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern != "" {
		// Let the mux dispatch so that r.PathValue is populated.
		s.mux.ServeHTTP(w, r)
		return
	}
	// No route matched: ask the mux's fallback handler what it would have
	// said, without letting its plain-text body out.
	cw := &captureWriter{header: make(http.Header)}
	h.ServeHTTP(cw, r)
	if cw.status == http.StatusMethodNotAllowed {
		if allow := cw.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		writeError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "Méthode non autorisée", nil)
		return
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", "Ressource introuvable", nil)
}

// captureWriter is a ResponseWriter that only records the status and the
// headers written to it and discards the body.
type captureWriter struct {
	header http.Header
	status int
}

func (c *captureWriter) Header() http.Header { return c.header }

func (c *captureWriter) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return len(p), nil
}

// timestamp is the current time in the RFC 3339 form used by createdAt.
func (s *Server) timestamp() string {
	return s.now().UTC().Format(time.RFC3339)
}

// health answers GET /api/v1/health.
func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// errorBody is the standard error shape.
type errorBody struct {
	Code    string              `json:"code"`
	Message string              `json:"message"`
	Details map[string][]string `json:"details,omitempty"`
}

// writeError writes the standard JSON error shape with the given status.
func writeError(w http.ResponseWriter, status int, code, message string, details map[string][]string) {
	body, err := json.Marshal(errorBody{Code: code, Message: message, Details: details})
	if err != nil { // cannot happen with strings only
		body = []byte(`{"code":"INTERNAL_ERROR","message":"Erreur interne du serveur"}`)
		status = http.StatusInternalServerError
	}
	writeRaw(w, status, "application/json; charset=utf-8", body)
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "INTERNAL_ERROR", "Erreur interne du serveur", nil)
		return
	}
	writeRaw(w, status, "application/json; charset=utf-8", body)
}

// writeRaw writes body with the given status and Content-Type and an exact
// Content-Length.
func writeRaw(w http.ResponseWriter, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// Messages shared by the handlers.
const (
	msgValidation     = "Requête invalide"
	msgRequired       = "Requis pour la création"
	msgEmpty          = "Ne peut pas être vide"
	msgRequiredUpdate = "Requis pour la mise à jour"
	msgBadJSON        = "JSON invalide"
	msgBadEmail       = "Adresse e-mail invalide"
	msgBadID          = "Identifiant invalide"
	msgBadValue       = "Valeur invalide"
)

// fieldErrors collects per-field validation messages.
type fieldErrors map[string][]string

func (f fieldErrors) add(field, msg string) { f[field] = append(f[field], msg) }

// writeValidation answers 400 VALIDATION_ERROR with the given details.
func writeValidation(w http.ResponseWriter, details map[string][]string) {
	writeError(w, http.StatusBadRequest, "VALIDATION_ERROR", msgValidation, details)
}

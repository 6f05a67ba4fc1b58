package supportdesk

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// ticket is a SupportDesk ticket as stored and as rendered.
type ticket struct {
	ID                 string `json:"id"`
	CustomerExternalID string `json:"customerExternalId"`
	Subject            string `json:"subject"`
	Message            string `json:"message"`
	Priority           string `json:"priority"`
	Status             string `json:"status"`
	CreatedAt          string `json:"createdAt"`

	seq int // creation order, for sorting by id
}

// ticketID formats the id of the n-th ticket.
func ticketID(n int) string { return fmt.Sprintf("tkt_%06d", n) }

var (
	validPriorities = []string{"low", "normal", "high"}
	validStatuses   = []string{"open", "pending", "closed"}
)

// listTickets answers GET /api/v1/tickets, optionally filtered by the
// customerExternalId query parameter.
func (s *Server) listTickets(w http.ResponseWriter, r *http.Request) {
	filter := r.URL.Query().Get("customerExternalId")
	s.mu.RLock()
	out := make([]ticket, 0, len(s.tickets))
	for _, t := range s.tickets {
		if filter == "" || t.CustomerExternalID == filter {
			out = append(out, *t)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b ticket) int { return cmp.Compare(a.seq, b.seq) })
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// createTicketRequest is the body of POST /api/v1/tickets.
type createTicketRequest struct {
	CustomerExternalID string `json:"customerExternalId"`
	Subject            string `json:"subject"`
	Message            string `json:"message"`
	Priority           string `json:"priority"`
}

// createTicket answers POST /api/v1/tickets.
func (s *Server) createTicket(w http.ResponseWriter, r *http.Request) {
	var req createTicketRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeBadJSON(w)
		return
	}
	req.Subject = strings.TrimSpace(req.Subject)
	req.Message = strings.TrimSpace(req.Message)

	errs := fieldErrors{}
	switch {
	case req.CustomerExternalID == "":
		errs.add("customerExternalId", msgRequired)
	case !externalIDPattern.MatchString(req.CustomerExternalID):
		errs.add("customerExternalId", msgBadID)
	}
	if req.Subject == "" {
		errs.add("subject", msgRequired)
	}
	if req.Message == "" {
		errs.add("message", msgRequired)
	}
	if req.Priority == "" {
		req.Priority = "normal"
	} else if !slices.Contains(validPriorities, req.Priority) {
		errs.add("priority", msgBadValue)
	}
	if len(errs) > 0 {
		writeValidation(w, errs)
		return
	}

	s.mu.Lock()
	if _, ok := s.customers[req.CustomerExternalID]; !ok {
		s.mu.Unlock()
		writeCustomerNotFound(w)
		return
	}
	if s.created >= s.quota {
		s.mu.Unlock()
		writeError(w, http.StatusForbidden, "PLAN_LIMIT_REACHED", "Quota mensuel de tickets atteint", nil)
		return
	}
	s.created++
	t := &ticket{
		ID:                 ticketID(s.created),
		CustomerExternalID: req.CustomerExternalID,
		Subject:            req.Subject,
		Message:            req.Message,
		Priority:           req.Priority,
		Status:             "open",
		CreatedAt:          s.timestamp(),
		seq:                s.created,
	}
	s.tickets[t.ID] = t
	out := *t
	s.mu.Unlock()

	w.Header().Set("Location", "/api/v1/tickets/"+out.ID)
	writeJSON(w, http.StatusCreated, out)
}

// writeTicketNotFound answers 404 TICKET_NOT_FOUND.
func writeTicketNotFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "TICKET_NOT_FOUND", "Ticket non trouvé", nil)
}

// getTicket answers GET /api/v1/tickets/{id}.
func (s *Server) getTicket(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	t, ok := s.tickets[r.PathValue("id")]
	var out ticket
	if ok {
		out = *t
	}
	s.mu.RUnlock()
	if !ok {
		writeTicketNotFound(w)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// updateTicketRequest is the body of PATCH /api/v1/tickets/{id}.
type updateTicketRequest struct {
	Status *string `json:"status"`
}

// updateTicket answers PATCH /api/v1/tickets/{id}.
func (s *Server) updateTicket(w http.ResponseWriter, r *http.Request) {
	var req updateTicketRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeBadJSON(w)
		return
	}
	switch {
	case req.Status == nil || *req.Status == "":
		writeValidation(w, map[string][]string{"status": {msgRequiredUpdate}})
		return
	case !slices.Contains(validStatuses, *req.Status):
		writeValidation(w, map[string][]string{"status": {msgBadValue}})
		return
	}

	s.mu.Lock()
	t, ok := s.tickets[r.PathValue("id")]
	if !ok {
		s.mu.Unlock()
		writeTicketNotFound(w)
		return
	}
	t.Status = *req.Status
	out := *t
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

package supportdesk

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// customer is a SupportDesk customer as stored and as rendered.
type customer struct {
	ExternalID string `json:"externalId"`
	Email      string `json:"email"`
	Name       string `json:"name"`
	CreatedAt  string `json:"createdAt"`
}

// writeCustomerNotFound answers 404 CUSTOMER_NOT_FOUND.
func writeCustomerNotFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "CUSTOMER_NOT_FOUND", "Client non trouvé", nil)
}

// writeEmailExists answers 409 CUSTOMER_EMAIL_EXISTS.
func writeEmailExists(w http.ResponseWriter) {
	writeError(w, http.StatusConflict, "CUSTOMER_EMAIL_EXISTS", "Adresse e-mail déjà utilisée",
		map[string][]string{"email": {"Déjà utilisée par un autre client"}})
}

// emailTakenLocked reports whether a customer other than exceptID already
// uses email, compared case-insensitively. s.mu must be held.
func (s *Server) emailTakenLocked(email, exceptID string) bool {
	for id, c := range s.customers {
		if id != exceptID && strings.EqualFold(c.Email, email) {
			return true
		}
	}
	return false
}

// listCustomers answers GET /api/v1/customers.
func (s *Server) listCustomers(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	out := make([]customer, 0, len(s.customers))
	for _, c := range s.customers {
		out = append(out, *c)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b customer) int { return strings.Compare(a.ExternalID, b.ExternalID) })
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// createCustomerRequest is the body of POST /api/v1/customers.
type createCustomerRequest struct {
	ExternalID string `json:"externalId"`
	Email      string `json:"email"`
	Name       string `json:"name"`
}

// createCustomer answers POST /api/v1/customers.
func (s *Server) createCustomer(w http.ResponseWriter, r *http.Request) {
	var req createCustomerRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeBadJSON(w)
		return
	}
	req.Email = strings.TrimSpace(req.Email)
	req.Name = strings.TrimSpace(req.Name)

	errs := fieldErrors{}
	switch {
	case req.ExternalID == "":
		errs.add("externalId", msgRequired)
	case !externalIDPattern.MatchString(req.ExternalID):
		errs.add("externalId", msgBadID)
	}
	switch {
	case req.Email == "":
		errs.add("email", msgRequired)
	case !validEmail(req.Email):
		errs.add("email", msgBadEmail)
	}
	if req.Name == "" {
		errs.add("name", msgRequired)
	}
	if len(errs) > 0 {
		writeValidation(w, errs)
		return
	}

	s.mu.Lock()
	if _, ok := s.customers[req.ExternalID]; ok {
		s.mu.Unlock()
		writeError(w, http.StatusConflict, "CUSTOMER_ALREADY_EXISTS", "Client déjà existant", nil)
		return
	}
	if s.emailTakenLocked(req.Email, "") {
		s.mu.Unlock()
		writeEmailExists(w)
		return
	}
	c := &customer{ExternalID: req.ExternalID, Email: req.Email, Name: req.Name, CreatedAt: s.timestamp()}
	s.customers[c.ExternalID] = c
	out := *c
	s.mu.Unlock()

	w.Header().Set("Location", "/api/v1/customers/"+url.PathEscape(out.ExternalID))
	writeJSON(w, http.StatusCreated, out)
}

// getCustomer answers GET /api/v1/customers/{externalId}.
func (s *Server) getCustomer(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	c, ok := s.customers[r.PathValue("externalId")]
	var out customer
	if ok {
		out = *c
	}
	s.mu.RUnlock()
	if !ok {
		writeCustomerNotFound(w)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// updateCustomerRequest is the body of PATCH /api/v1/customers/{externalId};
// a nil field is left unchanged.
type updateCustomerRequest struct {
	Email *string `json:"email"`
	Name  *string `json:"name"`
}

// updateCustomer answers PATCH /api/v1/customers/{externalId}.
func (s *Server) updateCustomer(w http.ResponseWriter, r *http.Request) {
	var req updateCustomerRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeBadJSON(w)
		return
	}
	errs := fieldErrors{}
	if req.Email != nil {
		*req.Email = strings.TrimSpace(*req.Email)
		switch {
		case *req.Email == "":
			errs.add("email", msgEmpty)
		case !validEmail(*req.Email):
			errs.add("email", msgBadEmail)
		}
	}
	if req.Name != nil {
		*req.Name = strings.TrimSpace(*req.Name)
		if *req.Name == "" {
			errs.add("name", msgEmpty)
		}
	}
	if len(errs) > 0 {
		writeValidation(w, errs)
		return
	}

	id := r.PathValue("externalId")
	s.mu.Lock()
	c, ok := s.customers[id]
	if !ok {
		s.mu.Unlock()
		writeCustomerNotFound(w)
		return
	}
	if req.Email != nil && s.emailTakenLocked(*req.Email, id) {
		s.mu.Unlock()
		writeEmailExists(w)
		return
	}
	if req.Email != nil {
		c.Email = *req.Email
	}
	if req.Name != nil {
		c.Name = *req.Name
	}
	out := *c
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// deleteCustomer answers DELETE /api/v1/customers/{externalId}. The
// customer's tickets are kept, as a history.
func (s *Server) deleteCustomer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("externalId")
	s.mu.Lock()
	_, ok := s.customers[id]
	delete(s.customers, id)
	s.mu.Unlock()
	if !ok {
		writeCustomerNotFound(w)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

package supportdesk

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/mail"
	"regexp"
	"strings"
)

// externalIDPattern is the accepted shape of a customer externalId.
var externalIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// errBadJSON reports a request body that is not a single JSON object of the
// expected shape.
var errBadJSON = errors.New("supportdesk: invalid JSON body")

// decodeBody reads at most maxBodyBytes of r's body and decodes it, as a
// single JSON object without unknown fields, into dst.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		return errBadJSON
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return errBadJSON
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return errBadJSON
	}
	if _, err := dec.Token(); err != io.EOF {
		return errBadJSON // trailing data after the object
	}
	return nil
}

// writeBadJSON answers 400 VALIDATION_ERROR for an unreadable body.
func writeBadJSON(w http.ResponseWriter) {
	writeValidation(w, map[string][]string{"body": {msgBadJSON}})
}

// validEmail reports whether s is a bare e-mail address: exactly one "@"
// with text on both sides, accepted by net/mail.ParseAddress unchanged.
func validEmail(s string) bool {
	at := strings.IndexByte(s, '@')
	if at <= 0 || at == len(s)-1 || strings.Count(s, "@") != 1 {
		return false
	}
	addr, err := mail.ParseAddress(s)
	return err == nil && addr.Name == "" && addr.Address == s
}

// isBlank reports whether s is empty once surrounding spaces are removed.
func isBlank(s string) bool { return strings.TrimSpace(s) == "" }

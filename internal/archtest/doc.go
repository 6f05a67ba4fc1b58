// Package archtest holds no code, only the tests that pin deskgate's
// architecture: which package may import which (so that the request path
// reads route → auth → limit → proxy without back-references, and the
// production binary carries no test harness), and that every package
// says what it is for in one package doc comment.
package archtest

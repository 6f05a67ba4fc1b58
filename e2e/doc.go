// Package e2e holds the black-box suites of deskgate: they build the
// gateway binary once per test run (as the Dockerfile builds it, see
// dockerfile_test.go), start it on free loopback ports, drive it over HTTP
// and signals, and read its log, its /metrics and the repository's deploy
// files. The package has no code of its own; its tests are in the
// *_test.go files, their shared helpers in harness_test.go.
//
//	go test -count=1 -p 1 ./e2e
package e2e

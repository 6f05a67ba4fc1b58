# syntax=docker/dockerfile:1
#
# deskgate container image (issue 9, SPEC §5).
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t deskgate .
#   docker run --rm -p 8080:8080 -p 9090:9090 -e DESKGATE_UPSTREAM=http://api:8081 deskgate
#
# The default target is the gateway; `--target supportdesk` builds the
# example upstream that deploy/docker-compose.yml runs next to it.
# deploy_test.go builds the binary with exactly the flags of the `go build`
# lines below (no Docker engine runs in CI): change them here only.

FROM golang:1.26.11 AS src
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .

FROM src AS build
ARG VERSION=dev
# Static (no cgo, no libc), reproducible paths (-trimpath), no symbol table
# or DWARF (-s -w), version stamped for -version and deskgate_build_info.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/deskgate .
# The default config is the repository's config.yaml with one change: the
# admin listener (/metrics, /healthz, /readyz) on every interface instead of
# 127.0.0.1, or no probe and no Prometheus outside the container could reach
# it. The grep fails the build if config.yaml stops matching the sed, and
# -check-config if the result is not a valid config.
RUN sed -e 's|listen: "127.0.0.1:9090"|listen: ":9090"|' config.yaml > /out/config.yaml \
 && grep -q 'listen: ":9090"' /out/config.yaml \
 && /out/deskgate -check-config -config /out/config.yaml

FROM src AS build-supportdesk
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/supportdesk ./cmd/supportdesk

# The example SupportDesk upstream (docker compose only).
FROM gcr.io/distroless/static-debian12:nonroot AS supportdesk
COPY --from=build-supportdesk /out/supportdesk /usr/local/bin/supportdesk
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/supportdesk"]
CMD ["-listen", ":8081"]

# The gateway: distroless static, no shell, uid 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot AS deskgate
COPY --from=build /out/deskgate /usr/local/bin/deskgate
COPY --from=build /out/config.yaml /etc/deskgate/config.yaml
USER 65532:65532
# 8080: the public listener (server.listen); 9090: the admin listener
# (admin.listen: /metrics, /healthz, /readyz).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/deskgate"]
CMD ["-config", "/etc/deskgate/config.yaml"]

# sidewall-controller: a static Go binary (CGO_ENABLED=0) on distroless/static.
# From the repository root:
#   docker build -f install/docker/controller.Dockerfile -t sidewall/sidewall-controller:dev .
# (`make images` builds both images.)
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# The BPF objects are committed (bpfext/objs), so the build needs no clang.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/sidewall-controller ./cmd/sidewall-controller

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sidewall-controller /usr/local/bin/sidewall-controller
# distroless's nonroot user: the controller only talks to the API server.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sidewall-controller"]

# sidewall-agent: a static Go binary (CGO_ENABLED=0) on distroless/static.
# From the repository root:
#   docker build -f install/docker/agent.Dockerfile -t sidewall/sidewall-agent:dev .
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
      -o /out/sidewall-agent ./cmd/sidewall-agent

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/sidewall-agent /usr/local/bin/sidewall-agent
# root (uid 0) with every capability dropped but BPF, NET_ADMIN and
# PERFMON, which the chart's DaemonSet grants: the bpffs, the cgroup tree
# and the Hubble socket directory on the host belong to root.
USER 0:0
ENTRYPOINT ["/usr/local/bin/sidewall-agent"]

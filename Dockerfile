# syntax=docker/dockerfile:1
#
# The podrouter image: the node agent (podrouter), the CNI plugin
# (podrouter-cni), the host-local IPAM plugin it delegates to and the
# portmap plugin an operator may chain after it (ConfigMap cni-chain.json),
# static binaries (CGO_ENABLED=0) on distroless/static.
#
#   make image                      # docker build (VERSION, COMMIT from git) -t podrouter:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=TAG \
#     --build-arg COMMIT=$(git rev-parse HEAD) -t REGISTRY/podrouter:TAG --push .
#
# The image's user is non-root (65532, distroless "nonroot"). The daemon
# itself must run as root: it creates the uplink TUN and the pods' TAPs
# through /dev/net/tun and netlink in the host's network namespace and owns
# root hostPaths, so deploy/daemonset.yaml sets runAsUser: 0 with only the
# capabilities it needs (NET_ADMIN, SYS_ADMIN; see there why).

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH
# What `podrouter version` and podrouter_build_info say (router/version);
# `make image` passes git's (see the Makefile's VERSION and COMMIT).
ARG VERSION=devel
ARG COMMIT=
WORKDIR /src
# Modules first: a source change does not re-download them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags="-s -w -X github.com/podrouter/podrouter/router/version.version=${VERSION} -X github.com/podrouter/podrouter/router/version.commit=${COMMIT}" -o /out/ ./cmd/podrouter ./cmd/podrouter-cni \
      github.com/containernetworking/plugins/plugins/ipam/host-local github.com/containernetworking/plugins/plugins/meta/portmap

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="podrouter" \
      org.opencontainers.image.description="Userspace virtual router for Kubernetes pod networking: node agent and CNI plugin" \
      org.opencontainers.image.source="https://github.com/podrouter/podrouter"
COPY --from=build /out/podrouter /out/podrouter-cni /out/host-local /out/portmap /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/podrouter"]
CMD ["help"]

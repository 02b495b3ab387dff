# podrouter build, test and benchmark entry points. `make lab` and
# `make test` are the two commands a fresh machine needs (README.md).

GO        ?= go
BIN       := bin
CACHE     := .cache
# Packages whose tests need no privileges; -race runs over them.
PKGS      := ./...
BENCHTIME ?= 1s
FUZZTIME  ?= 10s

.PHONY: all build tools kube-tools manifest image images deps lab test check vet race bench bench-e2e fuzz clean cluster-tools cluster cluster-down conformance FORCE

all: build

# What `podrouter version` and podrouter_build_info say (router/version),
# stamped into every podrouter binary built here and passed to the
# Dockerfile: the nearest v* tag (git describe, -dirty with local
# changes), else devel; the full commit, -dirty with local changes.
# Override either: make images VERSION=v0.4.0.
ifeq ($(origin VERSION),undefined)
VERSION := $(or $(shell git describe --tags --match 'v*' --dirty 2>/dev/null),devel)
endif
ifeq ($(origin COMMIT),undefined)
COMMIT := $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD -- 2>/dev/null || c=$$c-dirty; echo $$c; })
endif
VERSION_PKG     := github.com/podrouter/podrouter/router/version
VERSION_LDFLAGS := -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT)

build:
	$(GO) build -ldflags='$(VERSION_LDFLAGS)' -o $(BIN)/ ./cmd/...

# The main job on its built-in default: a single-node lab of virtual pods.
lab: build
	./$(BIN)/podrouter lab

# Helper binaries the end-to-end tests and benchmarks drive (cnitool,
# host-local IPAM, portmap, wireguard-go: the userspace WireGuard baseline),
# from the tool directives in go.mod, cached under $(CACHE)/bin.
tools:
	@mkdir -p $(CACHE)/bin
	$(GO) build -o $(CACHE)/bin/ tool

# kube-apiserver, etcd and kubectl for the Kubernetes-mode tests
# (router/kube/kubetest), built from the helper module
# deploy/kubetools into $(CACHE)/kube/bin: about 20 CPU-minutes cold (11+ min
# on 2 idle cores), seconds when cached,
# rebuilt only when a binary is missing or the helper module changed.
KUBE_BIN     := $(CACHE)/kube/bin
KUBE_TOOLS   := $(KUBE_BIN)/kube-apiserver $(KUBE_BIN)/etcd $(KUBE_BIN)/kubectl
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" { print $$2 }' deploy/kubetools/go.mod)
KUBE_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
                -X k8s.io/client-go/pkg/version.gitVersion=$(KUBE_VERSION)

kube-tools: $(KUBE_TOOLS)

$(KUBE_TOOLS) &: deploy/kubetools/go.mod deploy/kubetools/go.sum deploy/kubetools/etcd/main.go
	@mkdir -p $(KUBE_BIN)
	cd deploy/kubetools && $(GO) build -trimpath -buildvcs=false -ldflags='$(KUBE_LDFLAGS)' -o $(abspath $(KUBE_BIN))/ \
	  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd
	@touch $(KUBE_TOOLS)

# deploy/podrouter.yaml: deploy/ rendered by kubectl kustomize into one
# file (`kubectl apply -f`); deploy's TestRenderedManifest keeps it in sync.
manifest: kube-tools
	PODROUTER_UPDATE_MANIFEST=1 $(GO) test -count=1 -run '^TestRenderedManifest$$' ./deploy/

# The container image (Dockerfile; needs a docker daemon or BuildKit).
IMAGE ?= podrouter:dev
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .

# Images without a registry or a docker daemon: deploy/kubetools/imagetool
# writes docker-archive tarballs into $(IMAGES) that
# `ctr -n k8s.io images import` loads under the names below, so that the
# kubelet and the e2e suite never pull. Each is rebuilt only when its
# binaries or files change; the binaries are static (CGO_ENABLED=0).
#   podrouter: the Dockerfile's final stage (IMAGE sets the tag; a second
#     tag is a second file, e.g. `make images IMAGE=podrouter:v2`);
#   pause: our own deploy/kubetools/pause under containerd 2.4.2's default
#     sandbox image (internal/cri/config DefaultSandboxImage), which is also
#     the e2e framework's imageutils.Pause;
#   agnhost: k8s.io/kubernetes/test/images/agnhost under the name of the
#     e2e framework's imageutils.Agnhost, with the test userland below,
#     our curl and nc (deploy/kubetools/nettools) for the specs that exec them,
#     and /coredns as upstream's image has it (there 1.6.2, here the cluster's
#     own CoreDNS binary): the DNS specs' test servers run it in agnhost pods;
#   glibc-dns-testing: the e2e framework's imageutils.GlibcDnsTesting, the
#     DNS specs' second querier (upstream: Debian bookworm-slim with
#     dnsutils, and a CoreDNS 1.5.0 no spec runs): the test userland alone,
#     i.e. sh, busybox's applets (seq, sleep, cat, hostname, ...), Debian's
#     glibc-dynamic getent with the libc, and our dig;
#   coredns: github.com/coredns/coredns at the version its own small module
#     deploy/kubetools/coredns pins (its dependencies would move
#     k8s.io/kubernetes's in deploy/kubetools), under the upstream image's
#     name, laid out as upstream's: distroless/static's nonroot base, uid
#     65532, /coredns with the file capability cap_net_bind_service (:53).
# deploy/kubetools/imagetool's TestMakefileNames checks the names against
# the pinned k8s.io/kubernetes; TestBuiltImages builds them and reads them back.
IMAGES        ?= $(CACHE)/images
IMAGES_BIN    := $(IMAGES)/bin
PAUSE_IMAGE   := registry.k8s.io/pause:3.10.2
AGNHOST_IMAGE := registry.k8s.io/e2e-test-images/agnhost:2.66.1
COREDNS_VERSION := $(shell awk '$$1 == "github.com/coredns/coredns" { print $$2 }' deploy/kubetools/coredns/go.mod)
COREDNS_IMAGE := registry.k8s.io/coredns/coredns:$(COREDNS_VERSION)
GLIBC_DNS_IMAGE := registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1
BUSYBOX       ?= /bin/busybox
# distroless's CA bundle is Debian's; ours is this machine's, when it has one.
CA_BUNDLE     := $(wildcard /etc/ssl/certs/ca-certificates.crt)
imagefile      = $(IMAGES)/$(subst :,_,$(subst /,_,$(1))).tar
PODROUTER_TAR := $(call imagefile,$(IMAGE))
PAUSE_TAR     := $(call imagefile,$(PAUSE_IMAGE))
AGNHOST_TAR   := $(call imagefile,$(AGNHOST_IMAGE))
COREDNS_TAR   := $(call imagefile,$(COREDNS_IMAGE))
GLIBC_DNS_TAR := $(call imagefile,$(GLIBC_DNS_IMAGE))
COREDNS_MOD   := deploy/kubetools/coredns/go.mod deploy/kubetools/coredns/go.sum
IMAGETOOL     := $(IMAGES_BIN)/imagetool
MAIN_SRC      := go.mod go.sum $(shell find cmd router cni netstackx -name '*.go' -not -name '*_test.go' 2>/dev/null)
KUBETOOLS_MOD := deploy/kubetools/go.mod deploy/kubetools/go.sum
# The test userland of the agnhost and glibc-dns-testing images: the
# applets of busybox in /bin (its nc lacks -u: ours is used; it has no dig
# or curl); /bin/sh is Debian's dash (with its libc), not busybox's:
# Debian's busybox runs its own applets before PATH, so `sh -c 'nc -u ...'`
# would never reach our nc. Debian's getent (`getent hosts NAME`, the DNS
# specs' /etc/hosts probe: the libc's own resolver) needs only ld.so and
# libc.so.6 too (`ldd /usr/bin/getent`; NSS files and dns are in libc.so.6
# since glibc 2.34). dig is our nettools.
DASH       := $(firstword $(wildcard /usr/bin/dash /bin/dash))
GETENT     := /usr/bin/getent
GLIBC_LD   := $(realpath /lib64/ld-linux-x86-64.so.2)
GLIBC_LIBC := $(realpath /lib/x86_64-linux-gnu/libc.so.6)
TEST_APPLETS := ash cat echo grep egrep fgrep ls mkdir rm rmdir sleep test [ true false \
  env hostname ip ping ping6 nslookup wget sed awk head tail tr cut wc sort uniq id ps kill \
  date dd printf touch ln mv cp chmod chown timeout xargs find which nproc netstat tee stat \
  uname whoami readlink dirname basename mktemp seq expr pwd
TEST_USERLAND_DEPS := $(IMAGES_BIN)/nettools $(BUSYBOX) $(DASH) $(GETENT)
TEST_USERLAND = \
  -file /bin/busybox=$(BUSYBOX):0755 $(foreach a,$(TEST_APPLETS),-symlink '/bin/$(a)=busybox') \
  -file /bin/dash=$(DASH):0755 -symlink /bin/sh=dash \
  -file /lib64/ld-linux-x86-64.so.2=$(GLIBC_LD):0755 -file /lib/x86_64-linux-gnu/libc.so.6=$(GLIBC_LIBC):0755 \
  -file /usr/bin/getent=$(GETENT):0755 \
  -file /usr/bin/nettools=$(IMAGES_BIN)/nettools:0755 -symlink /usr/bin/dig=nettools \
  -dir /tmp:1777 -dir /root:0700 \
  -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

images: $(PODROUTER_TAR) $(PAUSE_TAR) $(AGNHOST_TAR) $(COREDNS_TAR) $(GLIBC_DNS_TAR)
	@echo "images in $(IMAGES): $(IMAGE) $(PAUSE_IMAGE) $(AGNHOST_IMAGE) $(COREDNS_IMAGE) $(GLIBC_DNS_IMAGE)"
	@echo "sandbox image (containerd sandbox_image / pinned_images.sandbox): $(PAUSE_IMAGE)"

$(IMAGETOOL) $(IMAGES_BIN)/pause $(IMAGES_BIN)/nettools &: $(KUBETOOLS_MOD) $(wildcard deploy/kubetools/imagetool/*.go deploy/kubetools/pause/*.go deploy/kubetools/nettools/*.go)
	@mkdir -p $(IMAGES_BIN)
	cd deploy/kubetools && CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags='-s -w' -o $(abspath $(IMAGES_BIN))/ ./imagetool ./pause ./nettools
	@touch $(IMAGETOOL) $(IMAGES_BIN)/pause $(IMAGES_BIN)/nettools

# The version stamped into the image's binaries: rewritten only when
# VERSION or COMMIT change, so a new commit rebuilds them and nothing else does.
VERSION_STAMP := $(IMAGES_BIN)/.version
$(VERSION_STAMP): FORCE
	@mkdir -p $(@D)
	@echo '$(VERSION) $(COMMIT)' | cmp -s - $@ || echo '$(VERSION) $(COMMIT)' > $@

$(IMAGES_BIN)/podrouter $(IMAGES_BIN)/podrouter-cni $(IMAGES_BIN)/host-local $(IMAGES_BIN)/portmap &: $(MAIN_SRC) $(VERSION_STAMP)
	@mkdir -p $(IMAGES_BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags='-s -w $(VERSION_LDFLAGS)' -o $(IMAGES_BIN)/ ./cmd/podrouter ./cmd/podrouter-cni \
	  github.com/containernetworking/plugins/plugins/ipam/host-local github.com/containernetworking/plugins/plugins/meta/portmap
	@touch $(IMAGES_BIN)/podrouter $(IMAGES_BIN)/podrouter-cni $(IMAGES_BIN)/host-local $(IMAGES_BIN)/portmap

$(IMAGES_BIN)/agnhost: $(KUBETOOLS_MOD)
	@mkdir -p $(IMAGES_BIN)
	cd deploy/kubetools && CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags='-s -w' -o $(abspath $(IMAGES_BIN))/ k8s.io/kubernetes/test/images/agnhost
	# porter's TLS certificate and key, which upstream's image has at / (its Dockerfile's ADD).
	d=$$(cd deploy/kubetools && $(GO) list -m -f '{{.Dir}}' k8s.io/kubernetes) && \
	  install -m 0644 $$d/test/images/agnhost/porter/localhost.crt $$d/test/images/agnhost/porter/localhost.key $(IMAGES_BIN)/
	@touch $@

# CoreDNS's main package, unchanged (every plugin of its plugin.cfg).
$(IMAGES_BIN)/coredns: $(COREDNS_MOD)
	@mkdir -p $(IMAGES_BIN)
	cd deploy/kubetools/coredns && CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags='-s -w' -o $(abspath $(IMAGES_BIN))/ github.com/coredns/coredns
	@touch $@

# The Dockerfile's final stage: distroless/static's nonroot base (users,
# nsswitch.conf, /tmp, /home/nonroot, PATH, SSL_CERT_FILE) plus its COPY,
# LABEL, USER, ENTRYPOINT and CMD. deploy/image_test.go checks they agree.
$(PODROUTER_TAR): $(IMAGETOOL) $(IMAGES_BIN)/podrouter $(IMAGES_BIN)/podrouter-cni $(IMAGES_BIN)/host-local $(IMAGES_BIN)/portmap $(wildcard deploy/kubetools/images/base/etc/*)
	$(IMAGETOOL) -name $(IMAGE) -o $@ \
	  -file /etc/passwd=deploy/kubetools/images/base/etc/passwd:0644 \
	  -file /etc/group=deploy/kubetools/images/base/etc/group:0644 \
	  -file /etc/nsswitch.conf=deploy/kubetools/images/base/etc/nsswitch.conf:0644 \
	  -dir /tmp:1777 -dir /home/nonroot:0700:65532:65532 \
	  $(if $(CA_BUNDLE),-file /etc/ssl/certs/ca-certificates.crt=$(CA_BUNDLE):0644) \
	  -file /usr/local/bin/podrouter=$(IMAGES_BIN)/podrouter:0755 \
	  -file /usr/local/bin/podrouter-cni=$(IMAGES_BIN)/podrouter-cni:0755 \
	  -file /usr/local/bin/host-local=$(IMAGES_BIN)/host-local:0755 \
	  -file /usr/local/bin/portmap=$(IMAGES_BIN)/portmap:0755 \
	  -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	  -env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
	  -label org.opencontainers.image.title=podrouter \
	  -label 'org.opencontainers.image.description=Userspace virtual router for Kubernetes pod networking: node agent and CNI plugin' \
	  -label org.opencontainers.image.source=https://github.com/podrouter/podrouter \
	  -workdir /home/nonroot -user 65532:65532 \
	  -entrypoint /usr/local/bin/podrouter -cmd help

# Upstream's image (coredns/coredns Dockerfile): distroless/static's
# nonroot base, `setcap cap_net_bind_service=+ep /coredns`, USER
# 65532:65532, WORKDIR /, ENTRYPOINT /coredns.
$(COREDNS_TAR): $(IMAGETOOL) $(IMAGES_BIN)/coredns $(wildcard deploy/kubetools/images/base/etc/*)
	$(IMAGETOOL) -name $(COREDNS_IMAGE) -o $@ \
	  -file /etc/passwd=deploy/kubetools/images/base/etc/passwd:0644 \
	  -file /etc/group=deploy/kubetools/images/base/etc/group:0644 \
	  -file /etc/nsswitch.conf=deploy/kubetools/images/base/etc/nsswitch.conf:0644 \
	  -dir /tmp:1777 -dir /home/nonroot:0700:65532:65532 \
	  $(if $(CA_BUNDLE),-file /etc/ssl/certs/ca-certificates.crt=$(CA_BUNDLE):0644) \
	  -file /coredns=$(IMAGES_BIN)/coredns:0755 -cap /coredns=cap_net_bind_service \
	  -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	  -env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
	  -workdir / -user 65532:65532 -entrypoint /coredns

$(PAUSE_TAR): $(IMAGETOOL) $(IMAGES_BIN)/pause
	$(IMAGETOOL) -name $(PAUSE_IMAGE) -o $@ \
	  -file /pause=$(IMAGES_BIN)/pause:0755 -user 65535:65535 -entrypoint /pause

$(AGNHOST_TAR): $(IMAGETOOL) $(IMAGES_BIN)/agnhost $(IMAGES_BIN)/coredns $(TEST_USERLAND_DEPS) Makefile $(wildcard deploy/kubetools/images/agnhost/etc/*)
	$(IMAGETOOL) -name $(AGNHOST_IMAGE) -o $@ \
	  -file /agnhost=$(IMAGES_BIN)/agnhost:0755 -symlink /agnhost-2=agnhost \
	  -file /localhost.crt=$(IMAGES_BIN)/localhost.crt:0644 -file /localhost.key=$(IMAGES_BIN)/localhost.key:0644 \
	  -file /coredns=$(IMAGES_BIN)/coredns:0755 \
	  -file /etc/passwd=deploy/kubetools/images/agnhost/etc/passwd:0644 \
	  -file /etc/group=deploy/kubetools/images/agnhost/etc/group:0644 \
	  -file /etc/nsswitch.conf=deploy/kubetools/images/agnhost/etc/nsswitch.conf:0644 \
	  -dir /uploads:0755 -dir /home/user-defined-in-image:0755:1000:1000 \
	  $(TEST_USERLAND) -symlink /usr/bin/curl=nettools -symlink /usr/bin/nc=nettools \
	  -entrypoint /agnhost -cmd pause

# Debian bookworm-slim's CMD is bash; ours is sh (the specs give a command).
$(GLIBC_DNS_TAR): $(IMAGETOOL) $(TEST_USERLAND_DEPS) Makefile $(wildcard deploy/kubetools/images/glibc-dns-testing/etc/*)
	$(IMAGETOOL) -name $(GLIBC_DNS_IMAGE) -o $@ \
	  -file /etc/passwd=deploy/kubetools/images/glibc-dns-testing/etc/passwd:0644 \
	  -file /etc/group=deploy/kubetools/images/glibc-dns-testing/etc/group:0644 \
	  -file /etc/nsswitch.conf=deploy/kubetools/images/glibc-dns-testing/etc/nsswitch.conf:0644 \
	  $(TEST_USERLAND) -cmd sh

$(BUSYBOX):
	@echo "$(BUSYBOX) missing: the agnhost image's shell. Run 'make deps' (Debian busybox-static) as root." >&2; exit 1

$(GETENT):
	@echo "$(GETENT) missing: the test images' getent (Debian libc-bin)." >&2; exit 1

# System packages for the privileged tests and benchmarks (installed when
# missing and root; otherwise those tests skip and say why).
deps:
	@bash .ci/deps

# Every test: formatting, vet, the whole suite, then the race detector over
# the same packages (-short there: the long transfers run once, above).
# PODROUTER_REQUIRE_KUBE=1: the Kubernetes-mode tests fail, not skip,
# without the kube-tools binaries; PODROUTER_REQUIRE_CLUSTER=1: the cluster
# e2e tests (deploy/cluster) fail, not skip, without the cluster binaries
# and images (they run once, in the first pass: -short skips them).
test: deps build tools kube-tools cluster-tools images check
	PODROUTER_REQUIRE_KUBE=1 PODROUTER_REQUIRE_CLUSTER=1 $(GO) test -count=1 -timeout 25m $(PKGS)
	PODROUTER_REQUIRE_KUBE=1 $(GO) test -count=1 -race -short -timeout 20m $(PKGS)

check: vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Datapath benchmarks (ns/op, allocs/op, pkt/s, Gbit/s and ratios).
bench:
	$(GO) test -run=NONE -bench=. -benchmem -benchtime=$(BENCHTIME) ./router/... ./netstackx/...

# End-to-end benchmarks against kernel baselines in the same run (root).
# Each case three times (RUNS=1 for a quick look): per-run lines, then medians.
# CASE=a,b runs only those cases; DURATION is iperf3's time per measurement.
RUNS     ?= 3
CASE     ?=
DURATION ?= 5s
bench-e2e: deps tools build
	$(GO) run ./bench/e2e -podrouter $(BIN)/podrouter -wireguard-go $(CACHE)/bin/wireguard -runs $(RUNS) -duration $(DURATION) -case '$(CASE)'

# A real cluster on this machine (deploy/cluster; root): the control plane
# on the host, nodes with their own network and mount namespaces,
# containerd and kubelet, podrouter's DaemonSet from deploy/ with the
# images of `make images`. No kube-proxy; nothing is pulled.
# Binaries: kube-tools, plus kubelet, kube-controller-manager and
# kube-scheduler (deploy/kubetools), containerd $(CONTAINERD_VERSION) with
# its shim and ctr, and runc $(RUNC_VERSION), all into $(KUBE_BIN); about
# 15 CPU-minutes cold on top of kube-tools, seconds when cached.
CONTAINERD_VERSION := v2.4.2
RUNC_VERSION       := v1.5.3
CLUSTER_KUBE  := $(KUBE_BIN)/kubelet $(KUBE_BIN)/kube-controller-manager $(KUBE_BIN)/kube-scheduler
CONTAINERD    := $(KUBE_BIN)/containerd $(KUBE_BIN)/containerd-shim-runc-v2 $(KUBE_BIN)/ctr
RUNC          := $(KUBE_BIN)/runc
CLUSTERCTL    := $(BIN)/clusterctl
NODES ?= 2

cluster-tools: kube-tools $(CLUSTER_KUBE) $(CONTAINERD) $(RUNC) $(CLUSTERCTL)

$(CLUSTER_KUBE) &: deploy/kubetools/go.mod deploy/kubetools/go.sum
	@mkdir -p $(KUBE_BIN)
	cd deploy/kubetools && $(GO) build -trimpath -buildvcs=false -ldflags='$(KUBE_LDFLAGS)' -o $(abspath $(KUBE_BIN))/ \
	  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
	@touch $(CLUSTER_KUBE)

$(CONTAINERD) &:
	@mkdir -p $(KUBE_BIN)
	cd / && GOBIN=$(abspath $(KUBE_BIN)) $(GO) install -trimpath \
	  github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION)

$(RUNC):
	@mkdir -p $(KUBE_BIN)
	cd / && GOBIN=$(abspath $(KUBE_BIN)) $(GO) install -trimpath -tags seccomp github.com/opencontainers/runc@$(RUNC_VERSION)

$(CLUSTERCTL): go.mod go.sum $(wildcard deploy/cluster/*.go deploy/cluster/clusterctl/*.go router/kube/kubepki/*.go)
	$(GO) build -o $(BIN)/ ./deploy/cluster/clusterctl

CLUSTER_FLAGS = --bin=$(KUBE_BIN) --nodes=$(NODES) --images=$(PODROUTER_TAR),$(PAUSE_TAR),$(AGNHOST_TAR),$(COREDNS_TAR),$(GLIBC_DNS_TAR) \
  --sandbox-image=$(PAUSE_IMAGE) --deploy=deploy --image=$(IMAGE)

# Starts the cluster and holds it (prints the kubeconfig); Ctrl-C or
# `make cluster-down` removes everything.
cluster: deps cluster-tools images
	./$(CLUSTERCTL) up $(CLUSTER_FLAGS)

cluster-down: $(CLUSTERCTL)
	./$(CLUSTERCTL) down

# The upstream judge: k8s.io/kubernetes/test/e2e (e2e.test) and ginkgo,
# against the held cluster, or a cluster of its own (removed afterwards).
FOCUS ?= \[sig-network\] Networking Granular Checks
SKIP  ?=
E2E_TEST := $(KUBE_BIN)/e2e.test
GINKGO   := $(KUBE_BIN)/ginkgo

$(E2E_TEST) $(GINKGO) &: deploy/kubetools/go.mod deploy/kubetools/go.sum
	@mkdir -p $(KUBE_BIN)
	cd deploy/kubetools && $(GO) test -c -trimpath -ldflags='$(KUBE_LDFLAGS)' -o $(abspath $(E2E_TEST)) k8s.io/kubernetes/test/e2e
	cd deploy/kubetools && $(GO) build -trimpath -o $(abspath $(KUBE_BIN))/ github.com/onsi/ginkgo/v2/ginkgo
	@touch $(E2E_TEST) $(GINKGO)

conformance: deps cluster-tools images $(E2E_TEST) $(GINKGO)
	./$(CLUSTERCTL) e2e $(CLUSTER_FLAGS) --e2e=$(E2E_TEST) --ginkgo=$(GINKGO) --focus='$(FOCUS)' --skip='$(SKIP)'

# A short run of every fuzz target (seeds live in testdata/fuzz).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run=NONE -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf $(BIN) $(CACHE)

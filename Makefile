# podrouter build, test and benchmark entry points. `make lab` and
# `make test` are the two commands a fresh machine needs (README.md).

GO        ?= go
BIN       := bin
CACHE     := .cache
# Packages whose tests need no privileges; -race runs over them.
PKGS      := ./...
BENCHTIME ?= 1s
FUZZTIME  ?= 10s

.PHONY: all build tools kube-tools image deps lab test check vet race bench bench-e2e fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The main job on its built-in default: a single-node lab of virtual pods.
lab: build
	./$(BIN)/podrouter lab

# Helper binaries the end-to-end tests and benchmarks drive (cnitool,
# host-local IPAM, wireguard-go: the userspace WireGuard baseline),
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

# The container image (Dockerfile; needs a docker daemon or BuildKit).
IMAGE ?= podrouter:dev
image:
	docker build -t $(IMAGE) .

# System packages for the privileged tests and benchmarks (installed when
# missing and root; otherwise those tests skip and say why).
deps:
	@bash .ci/deps

# Every test: formatting, vet, the whole suite, then the race detector over
# the same packages (-short there: the long transfers run once, above).
# PODROUTER_REQUIRE_KUBE=1: the Kubernetes-mode tests fail, not skip,
# without the kube-tools binaries.
test: deps tools kube-tools check
	PODROUTER_REQUIRE_KUBE=1 $(GO) test -count=1 -timeout 20m $(PKGS)
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

# A short run of every fuzz target (seeds live in testdata/fuzz).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run=NONE -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf $(BIN) $(CACHE)

# sidewall — container-scoped network policy for Kubernetes, with Cilium.
#
# Every target has a `## help` line; `make help` lists them. Tools are built
# from the Go module proxy into bin/ at pinned versions and are skipped when
# the pinned version is already there.

SHELL := /bin/bash
.DEFAULT_GOAL := help

BIN := bin
K8S_BIN := $(BIN)/k8s
GO ?= go

KUBE_VERSION      := v1.36.3
ETCD_VERSION      := v3.6.5
CONTROLLER_GEN_VERSION := v0.23.0
CLANG_VERSION     := 19

# envtest finds kube-apiserver and etcd here.
export KUBEBUILDER_ASSETS := $(CURDIR)/$(K8S_BIN)
export PATH := $(CURDIR)/$(BIN):$(PATH)

GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: help
help: ## List every target with what it does.
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_.-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Tools

.PHONY: tools
tools: $(K8S_BIN)/kube-apiserver $(K8S_BIN)/etcd $(BIN)/controller-gen $(BIN)/hubble ## Build kube-apiserver, etcd, controller-gen and hubble into bin/ (skips what is there at the pinned version).

# Each tool is built to a versioned file; the plain name is a symlink to it,
# so bumping a version rebuilds and an unchanged version is skipped.
$(BIN)/kube-apiserver-$(KUBE_VERSION):
	@mkdir -p $(BIN)
	@echo ">> building kube-apiserver $(KUBE_VERSION) (first time: about 9 minutes)"
	cd hack/tools/kube-apiserver && $(GO) build -o $(CURDIR)/$@ k8s.io/kubernetes/cmd/kube-apiserver

$(BIN)/etcd-$(ETCD_VERSION):
	@mkdir -p $(BIN)
	@echo ">> building etcd $(ETCD_VERSION) (first time: about 1 minute)"
	cd hack/tools/etcd && $(GO) build -o $(CURDIR)/$@ go.etcd.io/etcd/server/v3

$(K8S_BIN)/kube-apiserver: $(BIN)/kube-apiserver-$(KUBE_VERSION)
	@mkdir -p $(K8S_BIN)
	ln -sf ../$(notdir $<) $@

$(K8S_BIN)/etcd: $(BIN)/etcd-$(ETCD_VERSION)
	@mkdir -p $(K8S_BIN)
	ln -sf ../$(notdir $<) $@

$(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION):
	@mkdir -p $(BIN)/.cg
	@echo ">> installing controller-gen $(CONTROLLER_GEN_VERSION)"
	GOBIN=$(CURDIR)/$(BIN)/.cg $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(BIN)/.cg/controller-gen $@

$(BIN)/controller-gen: $(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
	ln -sf $(notdir $<) $@

# hubble is the stock CLI, built from the cilium module that go.mod pins
# (declared there as a tool), so it always matches the Observer API we serve.
# Stamped with its version as Cilium's build does: unstamped, it warns that
# it is older than every Hubble server it talks to.
HUBBLE_VERSION := $(shell $(GO) list -m -f '{{.Version}}' github.com/cilium/cilium 2>/dev/null)
$(BIN)/hubble-$(HUBBLE_VERSION):
	@mkdir -p $(BIN)
	@echo ">> building hubble CLI $(HUBBLE_VERSION) (first time: about 1.5 minutes)"
	$(GO) build -ldflags "-X github.com/cilium/cilium/hubble/pkg.Version=$(HUBBLE_VERSION)" -o $@ github.com/cilium/cilium/hubble

$(BIN)/hubble: $(BIN)/hubble-$(HUBBLE_VERSION)
	ln -sf $(notdir $<) $@

# cilium-agent and cilium-cni, built from the cilium module go.mod pins, for
# the Cilium node of the end-to-end suite and the demo; bin/cilium-lib holds
# that module's bpf/ sources, which the agent compiles at start.
CILIUM_VERSION := $(HUBBLE_VERSION)
# The version stamp Cilium's own build sets ("VERSION REVISION DATE"), which
# its Hubble reports; a module build has no git revision, so it is zeros.
CILIUM_LDFLAGS = -X 'github.com/cilium/cilium/pkg/version.ciliumVersion=$(CILIUM_VERSION:v%=%) 0000000 $(shell $(GO) list -m -f '{{.Time.Format "2006-01-02T15:04:05Z07:00"}}' github.com/cilium/cilium 2>/dev/null)'
$(BIN)/cilium-agent-$(CILIUM_VERSION):
	@mkdir -p $(BIN)
	@pinned=$$(cd hack/tools/cilium && $(GO) list -m -f '{{.Version}}' github.com/cilium/cilium); \
	  [ "$$pinned" = "$(CILIUM_VERSION)" ] || { echo "hack/tools/cilium pins cilium $$pinned but go.mod has $(CILIUM_VERSION): make them equal"; exit 1; }
	@echo ">> building cilium-agent $(CILIUM_VERSION) (first time: about 3 minutes)"
	cd hack/tools/cilium && $(GO) build -ldflags "$(CILIUM_LDFLAGS)" -o $(CURDIR)/$@ github.com/cilium/cilium/daemon

# hubble-relay, from the same module, for the Relay test of the Hubble API.
$(BIN)/hubble-relay-$(CILIUM_VERSION):
	@mkdir -p $(BIN)
	@echo ">> building hubble-relay $(CILIUM_VERSION) (first time: about 2 minutes)"
	cd hack/tools/cilium && $(GO) build -ldflags "$(CILIUM_LDFLAGS)" -o $(CURDIR)/$@ github.com/cilium/cilium/hubble-relay

$(BIN)/cilium-cni-$(CILIUM_VERSION):
	@mkdir -p $(BIN)
	cd hack/tools/cilium && $(GO) build -o $(CURDIR)/$@ github.com/cilium/cilium/plugins/cilium-cni

$(BIN)/cilium-lib-$(CILIUM_VERSION):
	@rm -rf $@.tmp && mkdir -p $@.tmp
	cd hack/tools/cilium && $(GO) mod download github.com/cilium/cilium
	cp -r "$$(cd hack/tools/cilium && $(GO) list -m -f '{{.Dir}}' github.com/cilium/cilium)/bpf" $@.tmp/bpf
	chmod -R u+w $@.tmp
	@# bpf/ holds Go test files: a go.mod of its own keeps them out of ./...
	printf 'module cilium-bpf-sources\n' > $@.tmp/go.mod
	mv $@.tmp $@

$(BIN)/cilium-agent $(BIN)/cilium-cni $(BIN)/cilium-lib $(BIN)/hubble-relay: $(BIN)/%: $(BIN)/%-$(CILIUM_VERSION)
	ln -sfn $(notdir $<) $@

.PHONY: cilium-tools
cilium-tools: $(BIN)/cilium-agent $(BIN)/cilium-cni $(BIN)/cilium-lib $(BIN)/hubble-relay ## Build cilium-agent, cilium-cni and hubble-relay into bin/ and install what they need from Debian (clang-19, llvm-19, ipset, iptables, iproute2).
	@command -v clang-19 >/dev/null && command -v llc-19 >/dev/null && command -v ipset >/dev/null && command -v iptables >/dev/null && command -v ip >/dev/null || { \
	  echo ">> installing clang-19 llvm-19 ipset iptables iproute2 from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 llvm-19 ipset iptables iproute2 >/dev/null; }

.PHONY: clang
clang: ## Install the pinned clang/llvm and libbpf's headers from Debian if missing (needed only by `make generate`).
	@# libbpf-dev too: cilium-tools installs clang and llvm without it.
	@command -v clang-$(CLANG_VERSION) >/dev/null && command -v llvm-strip-$(CLANG_VERSION) >/dev/null \
	  && test -f /usr/include/bpf/bpf_helpers.h || { \
	  echo ">> installing clang-$(CLANG_VERSION) from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-$(CLANG_VERSION) llvm-$(CLANG_VERSION) libbpf-dev >/dev/null; }

.PHONY: test-deps
test-deps: ## Install the Debian packages the kernel tests use (iproute2, iptables, iperf3, jq, containerd, runc, CNI plugins).
	@command -v ip >/dev/null && command -v iptables >/dev/null && command -v iperf3 >/dev/null && command -v jq >/dev/null \
	  && command -v containerd >/dev/null && command -v runc >/dev/null && test -x /usr/lib/cni/bridge || { \
	  echo ">> installing iproute2 iptables iperf3 jq containerd runc containernetworking-plugins from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables iperf3 jq util-linux \
	    containerd runc containernetworking-plugins >/dev/null; }

##@ Development

.PHONY: generate
generate: clang $(BIN)/controller-gen ## Regenerate BPF objects (bpf2go) and CRD/deepcopy/RBAC (controller-gen).
	BPF_CLANG=clang-$(CLANG_VERSION) BPF_STRIP=llvm-strip-$(CLANG_VERSION) $(GO) generate ./bpfext/...
	$(BIN)/controller-gen object paths=./crds/...
	$(BIN)/controller-gen crd paths=./crds/... output:crd:artifacts:config=crds/bases
	$(BIN)/controller-gen rbac:roleName=sidewall-controller paths=./translator/... output:rbac:artifacts:config=install/rbac
	$(GO) generate ./install/...

# What `make generate` writes.
GENERATED := 'bpfext/**/*_bpfel.go' 'bpfext/**/*_bpfel.o' 'crds/**/zz_generated.*.go' crds/bases install/rbac \
	install/helm/sidewall/crds install/helm/sidewall/files

.PHONY: verify-generated
verify-generated: generate ## Fail if committed generated code differs from a fresh `make generate`.
	@git diff --exit-code --stat -- $(GENERATED) || { \
	  echo "generated files are stale: run 'make generate' and commit the result"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- $(GENERATED)); \
	  if [ -n "$$untracked" ]; then echo "generated files not committed: $$untracked"; exit 1; fi

.PHONY: build
build: ## Build the controller and agent binaries into bin/.
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: lint
lint: ## go vet and a gofmt check.
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: check-imports
check-imports: ## Fail if bpfext imports the control plane or the agent, or translator imports bpfext or agent (go list).
	@hack/check-imports.sh

# make test asks for every test: the privileged ones (root: BPF, cgroups,
# network namespaces) and the integration ones (tools from bin/). There a
# test that cannot run fails; it never skips (hack/harness/privileged.go).
.PHONY: test
test: tools cilium-tools test-deps verify-generated lint check-imports ## Run the whole test suite (real kernel, real kube-apiserver+etcd), then each fuzz target briefly. Needs root.
	PRIVILEGED_TESTS=1 INTEGRATION_TESTS=1 $(GO) test $(GO_TEST_FLAGS) ./...
	@$(MAKE) --no-print-directory fuzz

.PHONY: test-unit
test-unit: check-imports ## A contributor's fast loop: every test that needs neither root nor built tools (the others skip, saying why).
	env -u PRIVILEGED_TESTS -u INTEGRATION_TESTS $(GO) test -count=1 ./...

# Each fuzz target as package:Name. Crashers found land in the package's
# testdata/fuzz/<Name>/ and are replayed by every later `go test`.
FUZZ_TARGETS := ./translator:FuzzTranslate ./bpfext:FuzzDecodeEvent ./agent/dnsproxy:FuzzParseAnswer
FUZZTIME ?= 15s

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 15s).
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; echo ">> fuzzing $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

.PHONY: bench
bench: tools test-deps ## Run the benchmarks and print the figures as ratios.
	@hack/bench.sh

##@ Demo

.PHONY: demo
demo: tools test-deps ## Run the local demo as root, on a real cilium-agent: control plane, controller, agent, a pod with a sidecar, real traffic, hubble (ARGS=--keep leaves it running; CILIUM=0 runs it without Cilium).
	@echo ">> building the demo (first time: about 1 minute)"
	$(GO) build -o $(BIN)/sidewall-demo ./demo/local
	@# The Cilium node is the default; without the Cilium tools the demo
	@# falls back to its lighter mode, and says so.
	@if [ "$(CILIUM)" = "0" ]; then \
	  $(BIN)/sidewall-demo --cilium=false $(ARGS); \
	elif $(MAKE) --no-print-directory cilium-tools; then \
	  $(BIN)/sidewall-demo $(ARGS); \
	else \
	  echo ">> the Cilium tools could not be built (see above): the demo runs without Cilium (--cilium=false)"; \
	  $(BIN)/sidewall-demo --cilium=false $(ARGS); \
	fi

##@ Images

REGISTRY ?=
VERSION  ?= dev
IMAGE_PREFIX := $(if $(REGISTRY),$(REGISTRY)/)sidewall

.PHONY: images
images: ## Build the controller and agent images (needs a Docker engine; none runs on the project's machines).
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine"; exit 1; }
	docker build -f install/docker/controller.Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE_PREFIX)/sidewall-controller:$(VERSION) .
	docker build -f install/docker/agent.Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE_PREFIX)/sidewall-agent:$(VERSION) .

.PHONY: clean
clean: ## Remove bin/ (the built tools).
	rm -rf $(BIN)

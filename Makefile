# Portcullis — build, test and run. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
GOFLAGS ?=
BIN := bin
# Packages whose tests need root run in the same `go test` as the rest: they
# skip without root, and fail instead when PORTCULLIS_REQUIRE_PRIVILEGED=1.
PKGS := ./...
FUZZTIME ?= 10s

.PHONY: help build demo demo-down kube-tools bench-proxies image generate verify-generated test test-unit fuzz bench lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

CMDS := ./agent/cmd/portcullis-agent ./tools/portcullis ./tools/devidp ./tools/demoapp

build: ## build the agent, the CLI, devidp and the demo app into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(CMDS)

demo: build ## run the demo (root): netns pods, devidp, the agent, scripted requests; leaves nothing behind
	BIN=$(CURDIR)/$(BIN) tools/demo/demo.sh

demo-down: ## remove whatever an interrupted demo left behind
	tools/demo/demo.sh down

generate: ## regenerate committed code (bpf2go objects, CRDs, deepcopy, protobuf)
	$(GO) generate ./...

# verify-generated compares the work tree before and after generating, so
# uncommitted edits of other files do not make it fail.
verify-generated: ## fail if generated code is not what `make generate` produces
	@state() { git status --porcelain -- . ':!go.sum'; git diff -- . ':!go.sum' | sha256sum; }; \
	before=$$(state); $(MAKE) --no-print-directory generate || exit 1; \
	if [ "$$(state)" != "$$before" ]; then \
		echo "generated code is stale; run 'make generate' and commit:"; git status --porcelain; git diff --stat; exit 1; fi

lint: ## gofmt check, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

test-unit: ## go test -race over every package (privileged tests included when root)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

fuzz: ## run every fuzz target for FUZZTIME each (tools/fuzz/run.sh)
	GO=$(GO) FUZZTIME=$(FUZZTIME) tools/fuzz/run.sh

kube-tools: ## build kube-apiserver, etcd, kubectl, helm for the Kubernetes tests (cached; a no-op when present)
	test/kubeenv/build.sh

test: lint verify-generated kube-tools test-unit fuzz ## everything CI runs: lint, generated-code check, all tests (as root), fuzzing

bench: ## benchmarks (datapath, token validation, policy evaluation)
	$(GO) test -p 1 -run '^$$' -bench . -benchmem -count=1 $(PKGS)

bench-proxies: build ## proxy benchmark (root): direct vs Portcullis vs HAProxy jwt_verify vs a TCP relay under wrk, with a perf profile
	tools/bench/run.sh

image: ## OCI image archive bin/portcullis-agent.oci.tar without a container engine (go-containerregistry)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-s -w" -o $(BIN)/ ./agent/cmd/portcullis-agent ./tools/portcullis
	cd daemonset/image && $(GO) run . -agent ../../$(BIN)/portcullis-agent -cli ../../$(BIN)/portcullis -o ../../$(BIN)/portcullis-agent.oci.tar

clean: ## remove build outputs
	rm -rf $(BIN)

# agentidd. The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED ?= 0
TOOLS := $(CURDIR)/.tools
BIN := $(CURDIR)/bin

# Pinned tool versions: `make test` installs exactly these.
STATICCHECK_VERSION := v0.8.2
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION := v1.9.3

# Debian packages the tests need: a real Secret Service on a private D-Bus, protoc for the staleness check.
# wine64 + mingw run the Windows test binaries (scripts/wine-test).
APT_PACKAGES := gnome-keyring dbus libsecret-tools protobuf-compiler wine64 gcc-mingw-w64-x86-64
# Commands the tests run, each with the Debian package installed when the command is missing: node and npm for the
# Node client's tests. A Node.js installed another way (with its own npm) is used as it is, not replaced.
APT_COMMANDS := node:nodejs npm:npm
CROSS_TARGETS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64

.PHONY: all build demo test test-go test-windows deps apt-deps tools lint vet staticcheck fmt-check mod-check proto proto-check cross bench fuzz clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/... ./examples/...

demo: build
	@scripts/demo.sh $(BIN)

test: deps lint proto-check test-go cross
	$(MAKE) test-windows REQUIRE_WINE=1
	@echo "make test: all checks passed"

test-go:
	scripts/with-secret-service env AGENTIDD_REQUIRE_SECRET_SERVICE=1 AGENTIDD_REQUIRE_NODE=1 PATH="$(TOOLS):$$PATH" CGO_ENABLED=1 \
		$(GO) test -race -count=1 -timeout 25m ./...

# The Windows test binaries under Debian's wine (docs/platforms.md lists what is kept and why the rest is not).
# make test requires wine (installed by apt-deps); run alone, it skips when wine is absent unless REQUIRE_WINE=1.
REQUIRE_WINE ?= 0
test-windows:
	AGENTIDD_REQUIRE_WINE=$(REQUIRE_WINE) scripts/wine-test

deps: apt-deps tools

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for c in $(APT_COMMANDS); do command -v $${c%%:*} >/dev/null 2>&1 || missing="$$missing $${c#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

tools: $(TOOLS)/staticcheck $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/grpcurl

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLS)/grpcurl:
	GOBIN=$(TOOLS) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

lint: vet staticcheck fmt-check mod-check

vet:
	$(GO) vet ./...

staticcheck: $(TOOLS)/staticcheck
	$(TOOLS)/staticcheck ./...

# go.mod must say what the code imports, no more and no less.
mod-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$') $$(git ls-files -o --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

PROTO_GEN = protoc -I proto -I /usr/include \
	--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(TOOLS)/protoc-gen-go-grpc \
	--go_out=$(1) --go_opt=paths=source_relative --go-grpc_out=$(1) --go-grpc_opt=paths=source_relative \
	proto/agentid/v1/agentid.proto

proto: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	$(call PROTO_GEN,proto)

# The committed generated code must be what `make proto` produces now.
proto-check: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(call PROTO_GEN,$$tmp) && \
	for f in agentid.pb.go agentid_grpc.pb.go; do \
		diff -q $$tmp/agentid/v1/$$f proto/agentid/v1/$$f >/dev/null || { echo "proto/agentid/v1/$$f is stale: run make proto"; exit 1; }; \
	done; echo "generated proto code is current"

# Every package, tests included, must build and vet for every target (the acceptance suite in internal/e2e runs on
# Linux only, but compiles everywhere).
cross:
	@for t in $(CROSS_TARGETS); do \
		os=$${t%/*}; arch=$${t#*/}; \
		echo "build $$os/$$arch"; \
		GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) build ./... || exit 1; \
		GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) vet ./... || exit 1; \
	done

bench: build
	scripts/with-secret-service $(GO) test -run='^$$' -bench=. -benchmem -count=1 -timeout 20m ./...
	@if [ "$$(nproc)" -lt 2 ]; then echo "== BenchmarkSocket pinned: skipped, it needs two CPUs"; else \
		echo "== BenchmarkSocket pinned: the daemon on CPU 0, the clients on CPU 1"; \
		AGENTIDD_BENCH_DAEMON_CPU=0 scripts/with-secret-service taskset -c 1 \
			$(GO) test -run='^$$' -bench=BenchmarkSocket -count=1 ./internal/e2e/; fi

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzTokenForm -fuzztime=2m ./internal/entraemu/
	$(GO) test -run='^$$' -fuzz=FuzzClientAssertion -fuzztime=2m ./internal/entraemu/

clean:
	rm -rf $(BIN) $(TOOLS)

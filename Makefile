# dmarc-milter: the same targets locally and in CI (.ci/run runs `make test`).

GO        ?= go
FUZZTIME  ?= 20s
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# staticcheck from PATH, else run the pinned release through the module
# proxy, so `make test` works on a machine that has only Go.
STATICCHECK_VERSION ?= v0.8.2
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo "$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)")

# In CI the Postfix end-to-end test must run, not skip (deploy/e2e).
ifeq ($(CI),true)
E2E_ENV := DMARC_E2E_REQUIRED=1
endif

.PHONY: all build test check race fuzz bench clean package

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/dmarc-milter ./cmd/dmarc-milter

test: check race fuzz

check:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt -l reports:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

race:
	$(E2E_ENV) $(GO) test -race -count=1 -timeout 10m ./...

# Every Fuzz target in the tree, one at a time (go test -fuzz takes one
# package and one target), for FUZZTIME each.
fuzz:
	@targets="$$(grep -rHoE --include='*_test.go' --exclude-dir=testdata --exclude-dir=.git \
		'^func Fuzz[A-Za-z0-9_]*\(' . | sort)"; \
	if [ -z "$$targets" ]; then echo "no Fuzz targets"; exit 0; fi; \
	echo "$$targets" | while IFS=: read -r file match; do \
		name="$${match#func }"; name="$${name%(}"; \
		pkg="./$$(dirname "$${file#./}")"; \
		echo "== fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) "$$pkg" || exit 1; \
	done

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# .deb and .rpm in dist/ (deploy/nfpm.yaml). The binary is rebuilt without
# cgo: static, so the .rpm does not depend on the build host's glibc.
NFPM_VERSION ?= v2.48.0
NFPM ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
# vX.Y.Z tags give X.Y.Z (+N+gSHA past a tag); untagged trees 0.0.0~gitSHA,
# which sorts below any release in dpkg and rpm.
PKG_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$${v\#v}" | tr - + || echo "0.0.0~git$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
PKG_ARCH ?= $(shell $(GO) env GOARCH)

package:
	@for f in deploy/dmarc-milter.toml deploy/OPERATIONS.md deploy/systemd/dmarc-milter.service; do \
		if [ ! -f "$$f" ]; then echo "make package: $$f is missing (deploy/nfpm.yaml ships it)" >&2; exit 1; fi; \
	done
	CGO_ENABLED=0 $(MAKE) build
	mkdir -p dist
	PKG_VERSION='$(PKG_VERSION)' PKG_ARCH='$(PKG_ARCH)' $(NFPM) package -f deploy/nfpm.yaml -p deb -t dist/
	PKG_VERSION='$(PKG_VERSION)' PKG_ARCH='$(PKG_ARCH)' $(NFPM) package -f deploy/nfpm.yaml -p rpm -t dist/

clean:
	rm -rf bin dist

# Load comparison with the Debian reference (OpenDKIM + OpenDMARC); root on
# Debian 12, about 3 minutes, not part of `make test` (deploy/bench/README.md).
.PHONY: bench-load
bench-load:
	deploy/bench/run.sh

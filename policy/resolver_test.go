package policy

import (
	"context"
	"net"
	"strings"
	"sync"
)

// fakeResolver is a map-based Resolver: txt holds the TXT records per
// name; a name with nothing at or below it is NXDOMAIN, one with data only
// below it is NODATA. fail lists names answering SERVFAIL (TXT queries and
// existence checks alike); failExists makes only the existence check fail.
type fakeResolver struct {
	txt        map[string][]string
	fail       map[string]bool
	failExists map[string]bool

	mu      sync.Mutex
	queries []string
}

func (f *fakeResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	f.mu.Lock()
	f.queries = append(f.queries, name)
	f.mu.Unlock()
	if f.fail[name] {
		return nil, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	if t, ok := f.txt[name]; ok {
		return t, nil
	}
	if f.below(name) {
		return nil, nil // NODATA
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (f *fakeResolver) DomainExists(ctx context.Context, name string) (bool, error) {
	if f.fail[name] || f.failExists[name] {
		return false, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	_, ok := f.txt[name]
	return ok || f.below(name), nil
}

func (f *fakeResolver) below(name string) bool {
	for k := range f.txt {
		if strings.HasSuffix(k, "."+name) {
			return true
		}
	}
	for k := range f.fail {
		if strings.HasSuffix(k, "."+name) {
			return true
		}
	}
	return false
}

func (f *fakeResolver) queried() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.queries...)
}

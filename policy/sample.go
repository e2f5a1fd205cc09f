package policy

import (
	"crypto/rand"
	"math/big"
)

// RandSampler selects with probability percent/100 from crypto/rand, so a
// sender cannot predict which messages escape a pct policy.
type RandSampler struct{}

// Sample implements Sampler.
func (RandSampler) Sample(percent int) bool {
	if percent <= 0 {
		return false
	}
	if percent >= 100 {
		return true
	}
	n, err := rand.Int(rand.Reader, big.NewInt(100))
	if err != nil {
		// crypto/rand does not fail on supported platforms; if it did,
		// applying the published policy is the conservative choice.
		return true
	}
	return n.Int64() < int64(percent)
}

// FixedSampler answers the same for every percentage strictly between 0
// and 100; 0 and 100 keep their meaning. For tests.
type FixedSampler bool

// Sample implements Sampler.
func (f FixedSampler) Sample(percent int) bool {
	if percent <= 0 {
		return false
	}
	if percent >= 100 {
		return true
	}
	return bool(f)
}

// Weaker returns the next weaker policy: reject to quarantine, quarantine
// to none (RFC 7489 §6.6.4 for pct, RFC 9989 §4.7 for t=y).
func Weaker(p Policy) Policy {
	switch p {
	case PolicyReject:
		return PolicyQuarantine
	default:
		return PolicyNone
	}
}

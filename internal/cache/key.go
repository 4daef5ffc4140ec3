package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
)

// Key names one cacheable token: whose authority (UserOID), which agent (AgentAppID, AgentName), which identity model (Mode), for
// which API (Resource), with which scopes, under which claims challenge. Two requests share a token only when every field
// is equal. Build keys with NewKey so that Scopes is a sorted set and ClaimsHash is derived the same way everywhere; a Key
// built by hand still works, because ID normalizes the scopes again.
type Key struct {
	UserOID    string `json:"user_oid"`
	AgentAppID string `json:"agent_app_id"`
	// AgentName is the local agent the token is for. Two configured agents may share one Entra agent identity, but each
	// has its own grants, so each has its own tokens: a revocation of one's grant then purges (and tells the watchers
	// of) exactly its tokens.
	AgentName  string   `json:"agent_name,omitempty"`
	Mode       string   `json:"mode"`
	Resource   string   `json:"resource"`
	Scopes     []string `json:"scopes"`                // sorted, deduplicated, no empty strings
	ClaimsHash string   `json:"claims_hash,omitempty"` // "" when the request carried no claims challenge

	// id is ID computed once by WithID, so that every map keyed by this key's ID shares one string.
	id string
}

// WithID returns k with its ID computed and kept. Use it for a key about to be stored: the broker's bookkeeping and the
// cache entry then share one ~200-byte string instead of each building its own. Do not change a key's fields after
// WithID.
func (k Key) WithID() Key {
	k.id = string(appendID(nil, k))
	return k
}

// claimsHashLen is how many hex digits of SHA-256 name a claims challenge: 128 bits, ample for the handful of challenges
// one user sees, and short enough to keep the key small.
const claimsHashLen = 32

// NewKey returns a Key with the scopes sorted and deduplicated (a fresh slice: the caller's is not touched) and the claims
// challenge replaced by a hash prefix, so the key never holds the challenge itself.
func NewKey(user, agent, mode, resource string, scopes []string, claims string) Key {
	k := Key{UserOID: user, AgentAppID: agent, Mode: mode, Resource: resource, Scopes: normalizeScopes(scopes)}
	if claims != "" {
		sum := sha256.Sum256([]byte(claims))
		k.ClaimsHash = hex.EncodeToString(sum[:claimsHashLen/2])
	}
	return k
}

// ID is the key's stable string form: the fields joined with NUL separators, then each scope after its own NUL. A NUL or
// backslash inside a field is escaped, so two different keys can never share an ID (an agent cannot smuggle a separator
// into a scope to collide with another scope set).
func (k Key) ID() string {
	if k.id != "" {
		return k.id
	}
	return string(appendID(nil, k))
}

// AppendID appends ID to b. With a stack buffer it keeps a lookup by ID free of allocations (a map index expression
// string(b) does not copy).
func (k Key) AppendID(b []byte) []byte { return appendID(b, k) }

func appendID(b []byte, k Key) []byte {
	b = appendField(b, k.UserOID)
	b = append(b, 0)
	b = appendField(b, k.AgentAppID)
	b = append(b, 0)
	b = appendField(b, k.AgentName)
	b = append(b, 0)
	b = appendField(b, k.Mode)
	b = append(b, 0)
	b = appendField(b, k.Resource)
	b = append(b, 0)
	b = appendField(b, k.ClaimsHash)
	scopes := k.Scopes
	if !isScopeSet(scopes) {
		scopes = normalizeScopes(scopes)
	}
	for _, s := range scopes {
		b = append(b, 0)
		b = appendField(b, s)
	}
	return b
}

func appendField(b []byte, s string) []byte {
	// Two IndexByte scans (vectorized) cost a fraction of ContainsAny, which builds a set on every call: this is the fast
	// path's only per-byte work.
	if strings.IndexByte(s, 0) < 0 && strings.IndexByte(s, '\\') < 0 {
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case 0:
			b = append(b, '\\', '0')
		case '\\':
			b = append(b, '\\', '\\')
		default:
			b = append(b, s[i])
		}
	}
	return b
}

// isScopeSet reports whether scopes is already strictly increasing with no empty string, the form NewKey produces.
func isScopeSet(scopes []string) bool {
	for i, s := range scopes {
		if s == "" || (i > 0 && scopes[i-1] >= s) {
			return false
		}
	}
	return true
}

func normalizeScopes(scopes []string) []string {
	if isScopeSet(scopes) {
		return scopes // already a set (the broker normalizes); keys are immutable, so sharing it is safe
	}
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		if s != "" {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

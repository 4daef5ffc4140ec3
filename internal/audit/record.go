// Package audit keeps the daemon's decision log: append-only JSONL, one
// record per decision, each line chained to the one before by SHA-256 so
// that editing, removing or reordering lines is detectable (Verify).
//
// Line format: a JSON object whose last two fields are "prev" and "hash".
// hash is the hex SHA-256 of the line's bytes up to, not including, the
// `,"hash":` separator (so it covers prev and every other field); prev is
// the previous line's hash, 64 zeros on line 1. The chain proves
// integrity, not authenticity: someone able to rewrite the whole file can
// rebuild it. Anchoring the head (Log.Head) in the encrypted store closes
// that gap for everything up to the anchor (VerifyAnchor).
//
// Records carry identifiers and hashes only: never a token, assertion or
// secret. TokenRef holds a hash prefix of the token, its uti and expiry.
package audit

import (
	"time"
	"unicode"
	"unicode/utf8"
)

// Events.
const (
	EventTokenIssued     = "token.issued"     // Source says cache or idp
	EventTokenDenied     = "token.denied"     // attestation, policy, consent or IdP refused
	EventConsentApproved = "consent.approved" // a grant was made
	EventConsentDenied   = "consent.denied"   // the user said no, or nobody answered
	EventGrantRevoked    = "grant.revoked"    // revoke, task end, expiry, agent removal
	EventSignIn          = "signin"
	EventSignOut         = "signout"
	EventPurge           = "purge" // cached tokens dropped (revocation, permanent IdP error, policy)
	// An `agentidd exec` launch makes every process of a tree attest as an agent, so it is a decision like a grant:
	// Peer is the exec process that asked, Agent the agent, RootPID the tree's root, LaunchID the launch.
	EventLaunchRegistered = "launch.registered" // ok, or denied with the reason
	EventLaunchEnded      = "launch.ended"      // the exec process ended it; the tree attests no more
	EventConsentReset     = "consent.reset"     // remembered denials cleared: agents may prompt again at once
)

// Outcomes.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
	OutcomeError  = "error"
)

// Token sources for EventTokenIssued.
const (
	SourceCache = "cache"
	SourceIdP   = "idp"
)

// User is the human principal.
type User struct {
	OID string `json:"oid,omitempty"`
	UPN string `json:"upn,omitempty"`
}

// Agent is the agent principal.
type Agent struct {
	AppID string `json:"app_id,omitempty"`
	Name  string `json:"name,omitempty"`
}

// Peer is the calling process as attested.
type Peer struct {
	PID    int    `json:"pid,omitempty"`
	UID    string `json:"uid,omitempty"` // uid on Unix, SID on Windows
	Exe    string `json:"exe,omitempty"`
	SHA256 string `json:"sha256,omitempty"` // prefix of the executable's hash
}

// TokenRef identifies an issued token without containing it.
type TokenRef struct {
	SHA256    string    `json:"sha256,omitempty"` // the token's fingerprint: a prefix of its SHA-256 (cache.Fingerprint)
	UTI       string    `json:"uti,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Record is one audit line. Seq, Time (if zero), Prev and Hash are filled
// in by Append.
type Record struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Event     string    `json:"event"`
	Outcome   string    `json:"outcome,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Source    string    `json:"source,omitempty"`
	User      User      `json:"user,omitzero"`
	Agent     Agent     `json:"agent,omitzero"`
	Chain     []string  `json:"actor_chain,omitempty"`
	Mode      string    `json:"mode,omitempty"`
	Resource  string    `json:"resource,omitempty"`
	Scopes    []string  `json:"scopes,omitempty"`
	GrantID   string    `json:"grant_id,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
	TaskID    string    `json:"task_id,omitempty"`
	RunID     string    `json:"run_id,omitempty"`
	LaunchID  string    `json:"launch_id,omitempty"`
	RootPID   int       `json:"root_pid,omitempty"`
	Peer      Peer      `json:"peer,omitzero"`
	Token     TokenRef  `json:"token,omitzero"`
	Prev      string    `json:"prev"`
	Hash      string    `json:"hash"`
}

// appendRecord encodes r up to and including "prev" (the hashed prefix).
// It is hand-written because encoding/json costs several microseconds and
// a dozen allocations per record on the token fast path; the field order
// and omissions match the struct tags so encoding/json reads it back.
func appendRecord(b []byte, r *Record, prev []byte) []byte {
	b = appendBody(b, r)
	b = append(b, `,"prev":"`...)
	b = append(b, prev...)
	return append(b, '"')
}

// MarshalJSON encodes r as Append writes it, so that a record read back and
// re-encoded for display (`agentidd audit tail`) keeps the escapes
// appendString adds: encoding/json would write C1 controls and bidi
// overrides from an agent's strings raw to the terminal.
func (r Record) MarshalJSON() ([]byte, error) {
	b := appendBody(make([]byte, 0, 768), &r)
	b = append(b, `,"prev":`...)
	// Prev and Hash come from a line that may not verify: quoted like any field, not trusted to be hex.
	b = appendString(b, r.Prev)
	b = append(b, `,"hash":`...)
	b = appendString(b, r.Hash)
	return append(b, '}'), nil
}

// appendBody encodes every field before "prev".
func appendBody(b []byte, r *Record) []byte {
	b = append(b, `{"seq":`...)
	b = appendUint(b, r.Seq)
	b = append(b, `,"time":"`...)
	b = r.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendField(b, "event", r.Event, true)
	b = appendField(b, "outcome", r.Outcome, false)
	b = appendField(b, "reason", r.Reason, false)
	b = appendField(b, "source", r.Source, false)
	if r.User != (User{}) {
		b = append(b, `,"user":{`...)
		b = appendFields(b, "oid", r.User.OID, "upn", r.User.UPN)
		b = append(b, '}')
	}
	if r.Agent != (Agent{}) {
		b = append(b, `,"agent":{`...)
		b = appendFields(b, "app_id", r.Agent.AppID, "name", r.Agent.Name)
		b = append(b, '}')
	}
	b = appendList(b, "actor_chain", r.Chain)
	b = appendField(b, "mode", r.Mode, false)
	b = appendField(b, "resource", r.Resource, false)
	b = appendList(b, "scopes", r.Scopes)
	b = appendField(b, "grant_id", r.GrantID, false)
	b = appendField(b, "request_id", r.RequestID, false)
	b = appendField(b, "task_id", r.TaskID, false)
	b = appendField(b, "run_id", r.RunID, false)
	b = appendField(b, "launch_id", r.LaunchID, false)
	if r.RootPID != 0 {
		b = append(b, `,"root_pid":`...)
		b = appendInt(b, r.RootPID)
	}
	if r.Peer != (Peer{}) {
		b = append(b, `,"peer":{`...)
		first := true
		if r.Peer.PID != 0 {
			b = append(b, `"pid":`...)
			b = appendInt(b, r.Peer.PID)
			first = false
		}
		b = appendMaybe(b, &first, "uid", r.Peer.UID)
		b = appendMaybe(b, &first, "exe", r.Peer.Exe)
		b = appendMaybe(b, &first, "sha256", r.Peer.SHA256)
		b = append(b, '}')
	}
	if r.Token != (TokenRef{}) {
		b = append(b, `,"token":{`...)
		first := true
		b = appendMaybe(b, &first, "sha256", r.Token.SHA256)
		b = appendMaybe(b, &first, "uti", r.Token.UTI)
		if !r.Token.ExpiresAt.IsZero() {
			if !first {
				b = append(b, ',')
			}
			b = append(b, `"expires_at":"`...)
			b = r.Token.ExpiresAt.UTC().AppendFormat(b, time.RFC3339Nano)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	return b
}

func appendField(b []byte, name, v string, always bool) []byte {
	if v == "" && !always {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

func appendFields(b []byte, n1, v1, n2, v2 string) []byte {
	first := true
	b = appendMaybe(b, &first, n1, v1)
	return appendMaybe(b, &first, n2, v2)
}

func appendMaybe(b []byte, first *bool, name, v string) []byte {
	if v == "" {
		return b
	}
	if !*first {
		b = append(b, ',')
	}
	*first = false
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

func appendList(b []byte, name string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':', '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}

func appendUint(b []byte, v uint64) []byte {
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

func appendInt(b []byte, v int) []byte {
	if v < 0 {
		return appendUint(append(b, '-'), uint64(-v))
	}
	return appendUint(b, uint64(v))
}

// Quote returns s as a JSON string escaped as records are (appendString), for text shown beside records that did not
// come from Append: a damaged line `agentidd audit tail` prints is whatever was written into the file, and
// encoding/json would hand its C1 and bidi controls to the reader's terminal.
func Quote(s string) string { return string(appendString(make([]byte, 0, len(s)+2), s)) }

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string the way encoding/json would read
// it back unchanged, except that invalid UTF-8 becomes U+FFFD (as
// encoding/json does when writing).
//
// Beyond what JSON requires it escapes DEL, the C1 controls and the bidi
// controls: agents choose scopes, task ids and their executable's path, and
// U+009B (CSI) or U+202E (right-to-left override) written raw would reach
// the terminal of whoever reads the log (`tail -f`, `agentidd audit tail`)
// as an escape sequence or a line that reads differently from its bytes.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028/2029 are valid JSON but end lines in some readers.
		if r <= 0x9f || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r) {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

package broker

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const (
	maxScopes        = 20
	maxScopeLen      = 256
	maxFieldLen      = 256
	maxJustification = 500
	maxClaimsLen     = 4096
)

// reservedScopes are OIDC scopes MSAL adds itself; an agent asking for them is confused or probing.
var reservedScopes = [...]string{"openid", "profile", "offline_access", "email"}

// isReservedScope compares without allocating: this runs on every request.
func isReservedScope(s string) bool {
	for _, r := range reservedScopes {
		if strings.EqualFold(s, r) {
			return true
		}
	}
	return false
}

// request is a GetTokenRequest after validation: every field the broker uses is checked here, once.
type request struct {
	agent         string
	scopes        []string // sorted, deduplicated
	resource      string
	mode          string // "obo" | "app"
	taskID        string
	runID         string
	minTTL        time.Duration
	forceRefresh  bool
	claims        string
	consentWait   time.Duration
	justification string
	parentAgent   string
	parentGrantID string
}

func badRequest(format string, args ...any) error {
	return rpcError(codes.InvalidArgument, ReasonInvalidArgument, fmt.Sprintf(format, args...), 0, nil)
}

// parseRequest validates a request; defaults come from the daemon config.
func parseRequest(in *agentidv1.GetTokenRequest, defaultMinTTL, maxConsentWait time.Duration) (request, error) {
	r := request{agent: in.GetAgent(), taskID: in.GetTaskId(), runID: in.GetRunId(), forceRefresh: in.GetForceRefresh(),
		claims: in.GetClaims(), justification: in.GetJustification(), parentAgent: in.GetParentAgent(), parentGrantID: in.GetParentGrantId()}
	if r.agent == "" {
		return r, badRequest("agent is required: the agent name from the agentidd config")
	}
	for _, f := range [...]struct{ name, value string }{{"agent", r.agent}, {"task_id", r.taskID}, {"run_id", r.runID}, {"parent_agent", r.parentAgent}, {"parent_grant_id", r.parentGrantID}} {
		if len(f.value) > maxFieldLen || !printable(f.value) {
			return r, badRequest("%s must be at most %d printable characters", f.name, maxFieldLen)
		}
	}
	if len(r.justification) > maxJustification {
		return r, badRequest("justification must be at most %d characters", maxJustification)
	}
	if len(r.claims) > maxClaimsLen {
		return r, badRequest("claims must be at most %d bytes", maxClaimsLen)
	}
	if r.claims != "" && !looksLikeJSONObject(r.claims) {
		return r, badRequest("claims must be the JSON claims challenge (decoded from the resource's WWW-Authenticate header)")
	}
	if (r.parentAgent == "") != (r.parentGrantID == "") {
		return r, badRequest("parent_agent and parent_grant_id go together")
	}
	switch in.GetMode() {
	case agentidv1.Mode_MODE_UNSPECIFIED, agentidv1.Mode_MODE_OBO:
		r.mode = "obo"
	case agentidv1.Mode_MODE_APP:
		r.mode = "app"
	default:
		return r, badRequest("mode %d is not known", in.GetMode())
	}
	scopes, resource, err := normalizeScopes(in.GetScopes())
	if err != nil {
		return r, err
	}
	r.scopes, r.resource = scopes, resource
	if r.mode == "app" && (len(scopes) != 1 || !strings.HasSuffix(scopes[0], "/.default")) {
		return r, badRequest("app mode takes exactly one scope of the form <resource>/.default")
	}
	r.minTTL = defaultMinTTL
	if d := in.GetMinTtl(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > 12*time.Hour {
			return r, badRequest("min_ttl must be between 0 and 12h")
		}
		if d.AsDuration() > 0 {
			r.minTTL = d.AsDuration()
		}
	}
	if d := in.GetConsentWait(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return r, badRequest("consent_wait must be a non-negative duration")
		}
		r.consentWait = min(d.AsDuration(), maxConsentWait)
	}
	return r, nil
}

// normalizeScopes checks every scope, requires one resource for all of them, and returns the sorted set.
func normalizeScopes(in []string) ([]string, string, error) {
	if len(in) == 0 {
		return nil, "", badRequest("at least one scope is required, e.g. api://files.contoso.example/Files.Read")
	}
	if len(in) > maxScopes {
		return nil, "", badRequest("at most %d scopes per request", maxScopes)
	}
	resource := ""
	for _, s := range in {
		if s == "" || len(s) > maxScopeLen || strings.ContainsAny(s, " \t\r\n") || !printable(s) {
			return nil, "", badRequest("scope %q is malformed: a scope is one token like api://app/Scope.Name", truncate(s, 64))
		}
		if isReservedScope(s) {
			return nil, "", badRequest("scope %q is added by the daemon itself; ask only for resource scopes", s)
		}
		i := strings.LastIndexByte(s, '/')
		if i <= 0 || i == len(s)-1 || !strings.Contains(s[:i], "://") {
			return nil, "", badRequest("scope %q must be fully qualified: <resource URI>/<scope>", truncate(s, 64))
		}
		res := s[:i]
		if resource == "" {
			resource = res
		} else if res != resource {
			return nil, "", badRequest("all scopes of one request must belong to one resource (%s and %s)", resource, res)
		}
	}
	// A sorted, de-duplicated copy: one allocation (a map here showed up in the daemon's profile as GC work).
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out), resource, nil
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func looksLikeJSONObject(s string) bool {
	s = strings.TrimSpace(s)
	return strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Package consent decides whether an agent may act for the user: an agent
// gets tokens only under a live Grant that the user approved for this
// agent, these scopes, this mode and a bounded time (or one task).
//
// A request that no grant covers becomes a pending consent request. The
// user answers it once, through the OS prompter or from the terminal
// (Manager.Decide), whichever comes first; every caller waiting on an
// identical request shares that one answer. A denial is remembered for a
// cool-down so an agent cannot nag the user with prompts; a prompt that
// times out is not remembered.
package consent

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// Modes an agent may ask for.
const (
	ModeOBO = "obo" // the token's subject is the user, the agent is the actor
	ModeApp = "app" // the token's subject is the agent identity itself
)

// Grant durations the user can pick. There is deliberately no "forever".
const (
	// TaskOnly binds the grant to the request's TaskID: it ends at
	// EndTask, and in any case after TaskOnlyCap.
	TaskOnly   time.Duration = -1
	OneHour                  = time.Hour
	EightHours               = 8 * time.Hour
	SevenDays                = 7 * 24 * time.Hour

	// TaskOnlyCap bounds a task-only grant whose task is never ended
	// (agent crashed, EndTask never sent).
	TaskOnlyCap = 8 * time.Hour
)

// Who decided and through what.
const (
	DecidedByUser   = "user"
	DecidedByPolicy = "policy"
	ViaTerminal     = "terminal"
	ViaPolicy       = "policy"
)

// Revocation reasons the Manager itself produces (Revoke callers pass their own).
const (
	ReasonExpired     = "expired"
	ReasonTaskEnded   = "task ended"
	ReasonTaskExited  = "the task's process exited"
	ReasonParentEnded = "the parent agent's grant ended"
)

// Process is the requesting process as attested at accept time. StartTime
// is platform.Process.StartTime: with PID it names one process for its
// whole life, so a task-bound grant can follow that process and not
// whatever later reuses its PID. 0 means unknown.
type Process struct {
	PID, PPID int
	// User is the requesting process's OS user as the audit log names it (uid, or the SID on Windows).
	User         string
	ExePath      string
	SHA256Prefix string
	StartTime    uint64
}

// Request is one agent asking to act. Scopes are normalised to a sorted
// set by the Manager. AgentName is the configured local agent (one program):
// several may share one AgentAppID, and the user's answer is about the
// program the prompt named, so grants, denials and joined requests belong to
// the name and the app id together.
type Request struct {
	ID                                      string // assigned by Manager
	UserOID, UserUPN                        string
	AgentName, AgentAppID, AgentDisplayName string
	Mode                                    string // ModeOBO or ModeApp
	Resource                                string // e.g. "api://files.contoso.example"
	Scopes                                  []string
	TaskID                                  string   // optional: grant bound to a task
	Justification                           string   // the agent's own words; shown marked as such
	Chain                                   []string // delegation chain (parent agent names)
	// ParentGrantID is the grant under which the last agent of Chain
	// delegated this work. It must be live, the same user's, and belong to
	// that agent; the Manager then records the full chain from it.
	ParentGrantID string
	Process       Process
	CreatedAt     time.Time
}

// Grant is a user's yes. Grants are immutable once made: treat the slices
// as read-only.
type Grant struct {
	ID         string    `json:"id"`
	UserOID    string    `json:"user_oid"`
	AgentAppID string    `json:"agent_app_id"`
	AgentName  string    `json:"agent_name"`
	Mode       string    `json:"mode"`
	Resource   string    `json:"resource"`
	Scopes     []string  `json:"scopes"`
	TaskID     string    `json:"task_id,omitempty"`
	Chain      []string  `json:"chain,omitempty"`
	NotAfter   time.Time `json:"not_after"`
	CreatedAt  time.Time `json:"created_at"`
	DecidedBy  string    `json:"decided_by"`  // DecidedByUser or DecidedByPolicy
	DecidedVia string    `json:"decided_via"` // "prompt:<name>", ViaTerminal or ViaPolicy
	RequestID  string    `json:"request_id,omitempty"`
	// ParentGrantID is the delegating agent's grant; this grant ends with it.
	ParentGrantID string `json:"parent_grant_id,omitempty"`
	// TaskPID and TaskProcStart name the process that asked for a
	// task-bound grant: the grant ends when it exits (see Options.WatchExit).
	TaskPID       int    `json:"task_pid,omitempty"`
	TaskProcStart uint64 `json:"task_proc_start,omitempty"`
}

// Expired reports whether the grant is past NotAfter at now. The monotonic
// reading is stripped: it stops while a laptop sleeps, and a grant must not
// outlive its wall-clock end.
func (g Grant) Expired(now time.Time) bool {
	return !now.Round(0).Before(g.NotAfter)
}

// Covers reports whether g authorises r (ignoring expiry): same user, agent
// (local name and app id), mode and resource; r's scopes a subset of g's;
// the same delegation chain; and, for a task-bound grant, the same task. A
// grant without a task covers requests of any task.
func (g Grant) Covers(r Request) bool {
	if g.UserOID != r.UserOID || g.AgentAppID != r.AgentAppID || g.AgentName != r.AgentName ||
		g.Mode != r.Mode || g.Resource != r.Resource {
		return false
	}
	if g.TaskID != "" && g.TaskID != r.TaskID {
		return false
	}
	if !slices.Equal(g.Chain, r.Chain) {
		return false
	}
	return subset(r.Scopes, g.Scopes)
}

// subset reports whether sorted set a ⊆ sorted set b.
func subset(a, b []string) bool {
	j := 0
	for _, s := range a {
		for j < len(b) && b[j] < s {
			j++
		}
		if j == len(b) || b[j] != s {
			return false
		}
		j++
	}
	return true
}

// Persister stores the Manager's state as one opaque blob. The daemon backs
// it with the encrypted store. LoadConsent returns (nil, nil) when nothing
// was saved yet.
type Persister interface {
	LoadConsent() ([]byte, error)
	SaveConsent([]byte) error
}

// Decision describes a settled consent request, for the audit log.
type Decision struct {
	Request    Request
	Allowed    bool
	Grant      *Grant // set when Allowed
	Via        string // "prompt:<name>", ViaTerminal, "timeout", "cancelled"
	Remembered bool   // a denial held for DenyCooldown
	Reason     string
}

// Options configure a Manager. Zero values get the documented defaults.
type Options struct {
	Now           func() time.Time  // default time.Now
	Prompter      platform.Prompter // nil: terminal approval only
	Persist       Persister         // nil: state lives in memory only
	DenyCooldown  time.Duration     // default 10m
	PromptTimeout time.Duration     // how long a request stays open; default 2m
	MaxGrant      time.Duration     // policy cap on any grant; 0 = SevenDays
	// OnRevoke runs synchronously before Revoke, RevokeAgent, EndTask,
	// Expire or the Check that noticed an expiry returns, so token caches
	// are purged before the caller goes on. It must not call back into the
	// Manager's mutating methods.
	OnRevoke func(g Grant, reason string)
	// OnDecision runs once per settled request (audit). Same rule as OnRevoke.
	OnDecision func(d Decision)
	// WatchExit, when set, follows the process that asked for a task-bound
	// grant: it calls onExit once when the process (pid, with start time
	// start; 0 = unknown) is gone, and never after stop. onExit may run on
	// any goroutine, even before WatchExit returns. Grants restored from disk
	// are watched again when ExpireLoop starts, once the daemon is wired.
	WatchExit func(pid int, start uint64, onExit func()) (stop func())
	// Configured, when set, reports whether a local agent (name and app id) may ask now: it is in the config, and the
	// managed policy does not exclude it. A request for one that may not is refused instead of opened: a call that
	// read the config or policy just before the agent was removed or excluded must not leave a prompt that would grant
	// it. It is called with the Manager's lock held, so it must not
	// call back into the Manager.
	Configured func(name, agentAppID string) bool
	Log        *slog.Logger
}

// Errors.
var (
	ErrInvalidRequest = errors.New("consent: invalid request")
	ErrNoSuchRequest  = errors.New("consent: no such pending request")
	ErrNoSuchGrant    = errors.New("consent: no such grant")
	ErrBadDuration    = errors.New("consent: duration must be task-only, 1h, 8h or 7d")
	// ErrParentGrant is wrapped by the *DeniedError of a delegated request
	// whose parent grant is missing, ended, or not the parent agent's.
	ErrParentGrant = errors.New("consent: the parent agent's grant does not cover this delegation")
	// ErrTooManyPending is wrapped by the *DeniedError (not remembered) of a
	// request that would open a prompt while its agent already has
	// maxPendingPerAgent open: a denial to the caller, since the user was not
	// asked, and callers that only know *DeniedError refuse it as such.
	ErrTooManyPending = errors.New("consent: too many consent requests from this agent are waiting for the user")
	// ErrNotConfigured is wrapped by the *DeniedError (not remembered) of a request for an agent that Options.Configured
	// says may no longer ask, and of an open request closed by RevokeLocalAgent (the agent left the config).
	ErrNotConfigured = errors.New("consent: the agent is no longer in the config")
)

// PendingError means the user has not answered yet. The caller may retry
// later or tell the user to run `agentidd consent approve <RequestID>`.
type PendingError struct {
	RequestID string
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("consent pending: approve with `agentidd consent approve %s`", e.RequestID)
}

// DeniedError means no consent. Remembered is true for a user's denial,
// which holds until Until (the cool-down); false for a prompt nobody
// answered, after which a new identical request prompts again.
type DeniedError struct {
	RequestID  string
	Remembered bool
	Until      time.Time
	Reason     string
	Err        error // the cause, when not the user's answer (ErrParentGrant, ErrTooManyPending)
}

func (e *DeniedError) Unwrap() error { return e.Err }

func (e *DeniedError) Error() string {
	if e.RequestID == "" {
		return "consent not given: " + e.Reason
	}
	if e.Remembered {
		return fmt.Sprintf("consent denied by the user (request %s); not asking again until %s, or run `agentidd consent reset`",
			e.RequestID, e.Until.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("consent not given (request %s): %s", e.RequestID, e.Reason)
}

// normalize validates r and puts its scopes in canonical form.
func normalize(r *Request) error {
	// Without the local agent's name a grant could not say which program the user approved.
	if r.UserOID == "" || r.AgentAppID == "" || r.AgentName == "" || r.Resource == "" {
		return fmt.Errorf("%w: user, agent app id, agent name and resource are required", ErrInvalidRequest)
	}
	switch r.Mode {
	case ModeOBO, ModeApp:
	case "":
		r.Mode = ModeOBO
	default:
		return fmt.Errorf("%w: mode must be %q or %q", ErrInvalidRequest, ModeOBO, ModeApp)
	}
	r.Scopes = NormalizeScopes(r.Scopes)
	if len(r.Chain) == 0 {
		r.Chain = nil
	}
	r.ParentGrantID = strings.TrimSpace(r.ParentGrantID)
	if r.ParentGrantID != "" && r.Chain == nil {
		return fmt.Errorf("%w: a parent grant needs the parent agent in the chain", ErrInvalidRequest)
	}
	return nil
}

// NormalizeScopes returns the sorted set of non-empty, trimmed scopes.
func NormalizeScopes(scopes []string) []string {
	if isNormalized(scopes) {
		return scopes // the broker already normalized them: no copy on the token fast path
	}
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// isNormalized reports whether scopes are already trimmed, non-empty, sorted and unique.
func isNormalized(scopes []string) bool {
	for i, s := range scopes {
		if s == "" || strings.TrimSpace(s) != s || (i > 0 && scopes[i-1] >= s) {
			return false
		}
	}
	return true
}

// key identifies "the same question": requests with equal keys join one
// pending request. The task is part of it because a prompt's default grant
// is bound to the asking task; denials match without it (deny.blocks).
func key(r Request) string {
	var b strings.Builder
	for _, f := range []string{r.UserOID, r.AgentAppID, r.AgentName, r.Mode, r.Resource, r.TaskID} {
		b.WriteString(f)
		b.WriteByte(0)
	}
	b.WriteString(strings.Join(r.Scopes, "\x01"))
	b.WriteByte(0)
	b.WriteString(strings.Join(r.Chain, "\x01"))
	return b.String()
}

// DurationText is how a grant duration reads in a prompt.
func DurationText(d time.Duration, taskID string) string {
	switch {
	case d == TaskOnly:
		return "until the task ends (at most " + humanDuration(TaskOnlyCap) + ")"
	case d > 0:
		return humanDuration(d)
	}
	if taskID != "" {
		return "until the task ends (at most " + humanDuration(TaskOnlyCap) + ")"
	}
	return humanDuration(OneHour)
}

func humanDuration(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		if n := d / (24 * time.Hour); n != 1 {
			return fmt.Sprintf("%d days", n)
		}
		return "1 day"
	case d%time.Hour == 0:
		if n := d / time.Hour; n != 1 {
			return fmt.Sprintf("%d hours", n)
		}
		return "1 hour"
	default:
		return d.Round(time.Minute).String()
	}
}

package entraemu

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Fault kinds.
const (
	FaultLatency   = "latency"   // delay, then answer normally
	FaultStatus    = "status"    // answer with Status (5xx) and an Entra-shaped server_error body
	FaultThrottle  = "throttle"  // 429 with Retry-After
	FaultReset     = "reset"     // drop the TCP connection without an answer
	FaultMalformed = "malformed" // 200 with a body that is not JSON
	FaultHang      = "hang"      // hold the request until faults are cleared or the client gives up
)

// Fault is one injected failure. Endpoint is one of instance, openid, keys, token, devicecode, deviceauth,
// authorize or "" for all; GrantType narrows token faults.
type Fault struct {
	Endpoint   string `json:"endpoint,omitempty"`
	GrantType  string `json:"grant_type,omitempty"`
	Kind       string `json:"kind"`
	LatencyMS  int    `json:"latency_ms,omitempty"`  // for latency
	Status     int    `json:"status,omitempty"`      // for status; 500..599, or 400..499 with Body html or empty
	RetryAfter int    `json:"retry_after,omitempty"` // seconds, for throttle
	// RetryAfterDate sends Retry-After as an HTTP-date on the emulator's clock (with a Date header on that clock, as a
	// server whose clock differs from the client's sends it) instead of delay-seconds. Both forms are valid (RFC 9110
	// §10.2.3), and gateways in front of Entra use the date.
	RetryAfterDate bool `json:"retry_after_date,omitempty"`
	// Body shapes a status or throttle answer: "" an Entra error body, "html" the HTML page of a proxy or gateway
	// that answered instead of the IdP, "empty" no body at all.
	Body  string `json:"body,omitempty"`
	Count int    `json:"count,omitempty"` // apply this many times; 0 = until cleared
}

// Fault bodies.
const (
	FaultBodyHTML  = "html"
	FaultBodyEmpty = "empty"
)

func (f *Fault) validate() error {
	switch f.Kind {
	case FaultLatency:
		if f.LatencyMS <= 0 || f.LatencyMS > 600_000 {
			return fmt.Errorf("latency_ms must be in (0, 600000]")
		}
	case FaultStatus:
		// A 4xx is only for what stands in for a proxy (an HTML page or no body): with an Entra body it would claim to
		// be the IdP's verdict, and server_error is not one.
		if f.Status < 500 || f.Status > 599 {
			if f.Body == "" || f.Status < 400 || f.Status > 499 {
				return fmt.Errorf("status must be 5xx, or 4xx with body html or empty")
			}
		}
	case FaultThrottle:
		if f.RetryAfter < 0 {
			return fmt.Errorf("retry_after must be ≥ 0")
		}
	case FaultReset, FaultMalformed, FaultHang:
	default:
		return fmt.Errorf("kind %q is not one of latency, status, throttle, reset, malformed, hang", f.Kind)
	}
	switch f.Body {
	case "", FaultBodyHTML, FaultBodyEmpty:
		if f.Body != "" && f.Kind != FaultStatus && f.Kind != FaultThrottle {
			return fmt.Errorf("body is only for status and throttle faults")
		}
	default:
		return fmt.Errorf("body %q is not one of html, empty", f.Body)
	}
	if f.RetryAfterDate && f.Kind != FaultThrottle {
		return fmt.Errorf("retry_after_date is only for throttle faults")
	}
	switch f.Endpoint {
	case "", "instance", "openid", "keys", "token", "devicecode", "deviceauth", "authorize":
	default:
		return fmt.Errorf("endpoint %q is not one of instance, openid, keys, token, devicecode, deviceauth, authorize", f.Endpoint)
	}
	if f.Count < 0 {
		return fmt.Errorf("count must be ≥ 0")
	}
	return nil
}

type faultSet struct {
	mu      sync.Mutex
	list    []*Fault
	cleared chan struct{} // closed by clear, releasing hung requests
}

func (s *faultSet) add(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = append(s.list, &f)
}

func (s *faultSet) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = nil
	close(s.cleared)
	s.cleared = make(chan struct{})
}

// match returns the first fault for this request, using up one of its count, and the channel that clearing closes.
func (s *faultSet) match(endpoint, grant string) (*Fault, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.list {
		if (f.Endpoint == "" || f.Endpoint == endpoint) && (f.GrantType == "" || f.GrantType == grant) {
			c := *f
			if f.Count > 0 {
				f.Count--
				if f.Count == 0 {
					s.list = append(s.list[:i], s.list[i+1:]...)
				}
			}
			return &c, s.cleared
		}
	}
	return nil, nil
}

// applyFault performs f and reports whether the request has been answered (or dropped).
func (e *Emulator) applyFault(w http.ResponseWriter, r *http.Request, f *Fault, cleared <-chan struct{}) bool {
	e.log.Info("fault injected", "kind", f.Kind, "path", r.URL.Path)
	switch f.Kind {
	case FaultLatency:
		t := time.NewTimer(time.Duration(f.LatencyMS) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			abortResponse()
		case <-e.closing:
			abortResponse()
		}
		return false
	case FaultStatus:
		e.writeFaultBody(w, r, f, newErr(f.Status, "server_error", 90033, "A transient error has occurred. Please try again. (injected fault)"))
		return true
	case FaultThrottle:
		if f.RetryAfterDate {
			now := e.now().UTC()
			w.Header().Set("Date", now.Format(http.TimeFormat))
			w.Header().Set("Retry-After", now.Add(time.Duration(f.RetryAfter)*time.Second).Format(http.TimeFormat))
		} else {
			w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
		}
		e.writeFaultBody(w, r, f, newErr(http.StatusTooManyRequests, "temporarily_unavailable", 50196, "The server terminated an operation because it encountered a client request loop. (injected fault)"))
		return true
	case FaultMalformed:
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(200)
		_, _ = w.Write([]byte(`{"token_type":"Bearer","access_token":`))
		return true
	case FaultHang:
		select {
		case <-cleared:
			return false
		case <-r.Context().Done():
		case <-e.closing:
		}
		abortResponse()
	case FaultReset:
		resetConn(w)
		return true
	}
	return false
}

// writeFaultBody answers with oe's status in the body shape f asks for.
func (e *Emulator) writeFaultBody(w http.ResponseWriter, r *http.Request, f *Fault, oe *oauthError) {
	switch f.Body {
	case FaultBodyHTML:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(oe.status)
		_, _ = fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><title>%d %s</title><style>body{font-family:sans-serif}</style></head>"+
			"<body><h1>%d %s</h1><p>The upstream server did not answer. (injected fault)</p></body></html>\n",
			oe.status, http.StatusText(oe.status), oe.status, http.StatusText(oe.status))
	case FaultBodyEmpty:
		w.WriteHeader(oe.status)
	default:
		e.writeError(w, r, oe)
	}
}

// abortResponse ends a held request without an answer. Returning from the handler instead would make net/http send an
// empty 200, which a client whose deadline raced with it could read as a token response.
func abortResponse() {
	panic(http.ErrAbortHandler) // net/http recovers this sentinel silently and drops the response
}

// resetConn closes the connection with an RST so the client sees "connection reset by peer", not a clean EOF.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		abortResponse() // HTTP/2: abort the stream
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		abortResponse()
	}
	raw := conn
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		raw = nc.NetConn()
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = raw.Close()
}

// Counters are request counts since the last reset.
type Counters struct {
	Total        int            `json:"total"`
	ByEndpoint   map[string]int `json:"by_endpoint"`
	ByGrantType  map[string]int `json:"by_grant_type"`
	ByClientID   map[string]int `json:"by_client_id"`
	MaxPerSecond int            `json:"max_per_second"` // most token-endpoint requests seen within one wall-clock second
	Since        time.Time      `json:"since"`
}

type counters struct {
	mu        sync.Mutex
	c         Counters
	curSecond int64
	curCount  int
}

func (k *counters) record(endpoint, grant, client string, at time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.init(at)
	k.c.Total++
	k.c.ByEndpoint[endpoint]++
	if endpoint != "token" {
		return
	}
	if grant != "" {
		k.c.ByGrantType[truncate(grant, 64)]++
	}
	if client != "" && len(k.c.ByClientID) < 1000 {
		k.c.ByClientID[truncate(client, 64)]++
	}
	sec := at.Unix()
	if sec != k.curSecond {
		k.curSecond, k.curCount = sec, 0
	}
	k.curCount++
	k.c.MaxPerSecond = max(k.c.MaxPerSecond, k.curCount)
}

func (k *counters) init(at time.Time) {
	if k.c.ByEndpoint == nil {
		k.c = Counters{ByEndpoint: map[string]int{}, ByGrantType: map[string]int{}, ByClientID: map[string]int{}, Since: at}
	}
}

func (k *counters) snapshot() Counters {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.init(time.Now())
	c := k.c
	c.ByEndpoint, c.ByGrantType, c.ByClientID = cloneMap(c.ByEndpoint), cloneMap(c.ByGrantType), cloneMap(c.ByClientID)
	return c
}

func (k *counters) reset() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.c = Counters{}
	k.curSecond, k.curCount = 0, 0
	k.init(time.Now())
}

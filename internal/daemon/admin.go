package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentidd/agentidd/internal/audit"
	"github.com/agentidd/agentidd/internal/broker"
	"github.com/agentidd/agentidd/internal/consent"
	"github.com/agentidd/agentidd/internal/entra"
	"github.com/agentidd/agentidd/ipc"
	agentidv1 "github.com/agentidd/agentidd/proto/agentid/v1"
)

const adminPrefix = "/agentid.v1.Admin/"

// The Admin service can approve consent, so only the agentidd binary itself may call it: the peer's executable must be
// the daemon's own, by path and content hash. A same-user attacker with ptrace can still drive that binary; SECURITY.md
// says so.
func (d *Daemon) checkAdminPeer(ctx context.Context) error {
	peer, ok := ipc.PeerFromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, "admin calls need peer credentials")
	}
	proc, err := d.inspect.Inspect(peer.PID)
	if err != nil {
		return status.Error(codes.PermissionDenied, "admin calls are allowed only from the agentidd binary (cannot inspect caller)")
	}
	if peer.StartTime != 0 && proc.StartTime != peer.StartTime {
		return status.Error(codes.PermissionDenied, "the calling process's PID was reused")
	}
	if broker.ExecutedSinceAccept(peer, proc) {
		return status.Error(codes.PermissionDenied, "the process that connected may have started another program since (or its executable could not be read when it connected)")
	}
	exe, _ := filepath.EvalSymlinks(proc.ExePath)
	if exe != d.selfExe {
		return status.Errorf(codes.PermissionDenied, "admin calls are allowed only from the agentidd binary %s, not %s", d.selfExe, proc.ExePath)
	}
	sum, err := d.inspect.ExeDigest(proc.ImageToHash())
	if err != nil || sum != d.selfHash {
		return status.Error(codes.PermissionDenied, "admin calls are allowed only from the agentidd binary (hash differs: was it replaced?)")
	}
	if err := peer.Alive(); err != nil {
		return status.Error(codes.PermissionDenied, "the calling process is gone")
	}
	return nil
}

func (d *Daemon) adminGateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, adminPrefix) {
		if err := d.checkAdminPeer(ctx); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

func (d *Daemon) adminGateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, adminPrefix) {
		if err := d.checkAdminPeer(ss.Context()); err != nil {
			return err
		}
	}
	return h(srv, ss)
}

// adminPeer is an admin caller as an audit record names it. Its executable is the daemon's own: the admin gate let the
// call through only after checking that, by path and hash.
func (d *Daemon) adminPeer(p *ipc.PeerInfo) audit.Peer {
	if p == nil {
		return audit.Peer{}
	}
	uid := p.SID
	if uid == "" {
		uid = strconv.Itoa(p.UID)
	}
	sum := d.selfHash
	if len(sum) > 12 {
		sum = sum[:12]
	}
	return audit.Peer{PID: p.PID, UID: uid, Exe: d.selfExe, SHA256: sum}
}

// signedInUser is the signed-in account as a record's user principal (empty when nobody is signed in).
func (d *Daemon) signedInUser() audit.User {
	if d.idp == nil {
		return audit.User{}
	}
	if acct := d.idp.Account(); acct != nil {
		return audit.User{OID: acct.OID, UPN: acct.UPN}
	}
	return audit.User{}
}

// auditUser is the user principal of a record about oid, with the UPN when oid is the signed-in account. Only the OID
// is known otherwise (a grant outlives the sign-in it was made under).
func (d *Daemon) auditUser(oid string) audit.User {
	if u := d.signedInUser(); oid != "" && u.OID == oid {
		return u
	}
	return audit.User{OID: oid}
}

type admin struct {
	agentidv1.UnimplementedAdminServer
	d *Daemon
}

func (a *admin) Status(ctx context.Context, _ *agentidv1.StatusRequest) (*agentidv1.StatusResponse, error) {
	d := a.d
	d.sec.pokeProbe()
	st := d.cache.Stats()
	out := &agentidv1.StatusResponse{
		Version: VersionString(), Pid: int32(osPID()), Endpoint: d.endpoint, Online: st.Online, LastIdpErrorClass: st.LastErrorClass,
		CachedTokens: int32(st.Entries), Authority: d.config().Authority, Degraded: d.broker.Degraded(),
		PendingConsents: int32(len(d.consent.Pending())), Grants: int32(len(d.consent.Grants())),
	}
	if d.secrets != nil {
		out.SecretStore = d.secrets.Describe()
	}
	if !st.LastError.IsZero() {
		out.LastIdpErrorAt = timestamppb.New(st.LastError)
	}
	if !st.NextRefresh.IsZero() {
		out.NextRefresh = timestamppb.New(st.NextRefresh)
	}
	if acct := d.idp.Account(); acct != nil {
		out.SignedIn, out.UserUpn, out.UserOid = true, acct.UPN, acct.OID
	}
	return out, nil
}

func (a *admin) Login(_ *agentidv1.LoginRequest, stream agentidv1.Admin_LoginServer) error {
	d := a.d
	if err := a.refuseFromAgentTree(stream.Context(), "a sign-in"); err != nil {
		return err
	}
	if why := d.broker.Degraded(); why != "" {
		return status.Error(codes.FailedPrecondition, why)
	}
	ctx, cancel := context.WithTimeout(stream.Context(), 15*time.Minute)
	defer cancel()
	var sendErr error
	acct, err := d.idp.LoginDeviceCode(ctx, func(p entra.DeviceCodePrompt) {
		sendErr = stream.Send(&agentidv1.LoginEvent{Message: p.Message, VerificationUri: p.VerificationURI, UserCode: p.UserCode})
	})
	if sendErr != nil {
		return sendErr
	}
	if err != nil {
		_, _ = d.audit.Append(audit.Record{Event: audit.EventSignIn, Outcome: audit.OutcomeDenied, Reason: entra.Classify(err).Error()})
		return status.Error(codes.Unauthenticated, "sign-in failed: "+entra.Classify(err).Error())
	}
	_, _ = d.audit.Append(audit.Record{Event: audit.EventSignIn, Outcome: audit.OutcomeOK, User: audit.User{OID: acct.OID, UPN: acct.UPN}})
	d.alerts.forget("user:" + acct.OID)
	return stream.Send(&agentidv1.LoginEvent{UserUpn: acct.UPN, UserOid: acct.OID, Message: "signed in as " + acct.UPN})
}

func (a *admin) Logout(ctx context.Context, _ *agentidv1.LogoutRequest) (*agentidv1.LogoutResponse, error) {
	d := a.d
	acct := d.idp.Account()
	if acct == nil {
		return &agentidv1.LogoutResponse{}, nil // signed_out false: nobody was signed in
	}
	// Sign out first, then purge: with no account, no GetToken can mint a token for this user between the purge and
	// the sign-out (a fetch already under way is discarded by the purge). Purge even when the sign-out failed: once
	// Logout returns, no token derived from this sign-in may be served.
	logoutErr := d.idp.Logout(ctx)
	n := d.cache.PurgeUser(acct.OID, "user signed out")
	if d.store != nil {
		d.tokens.purge(func(s servedToken) bool { return s.Key.UserOID == acct.OID })
	}
	if logoutErr != nil {
		return nil, status.Error(codes.Internal, logoutErr.Error())
	}
	_, _ = d.audit.Append(audit.Record{Event: audit.EventSignOut, Outcome: audit.OutcomeOK, User: audit.User{OID: acct.OID, UPN: acct.UPN}})
	return &agentidv1.LogoutResponse{PurgedTokens: int32(n), SignedOut: true}, nil
}

func (a *admin) ListAgents(context.Context, *agentidv1.ListAgentsRequest) (*agentidv1.ListAgentsResponse, error) {
	out := &agentidv1.ListAgentsResponse{}
	for _, ag := range a.d.config().Agents {
		pa := &agentidv1.Agent{Name: ag.Name, AppId: ag.AppID, DisplayName: ag.DisplayName}
		for _, b := range ag.Bindings {
			pa.Bindings = append(pa.Bindings, "exe "+b.Exe+" sha256:"+b.SHA256[:12]+"…")
		}
		out.Agents = append(out.Agents, pa)
	}
	return out, nil
}

func grantProto(g consent.Grant) *agentidv1.Grant {
	return &agentidv1.Grant{Id: g.ID, AgentName: g.AgentName, AgentAppId: g.AgentAppID, Mode: g.Mode, Resource: g.Resource,
		Scopes: g.Scopes, TaskId: g.TaskID, NotAfter: timestamppb.New(g.NotAfter), CreatedAt: timestamppb.New(g.CreatedAt),
		DecidedVia: g.DecidedVia, Chain: g.Chain}
}

func (a *admin) ListGrants(context.Context, *agentidv1.ListGrantsRequest) (*agentidv1.ListGrantsResponse, error) {
	out := &agentidv1.ListGrantsResponse{}
	for _, g := range a.d.consent.Grants() {
		out.Grants = append(out.Grants, grantProto(g))
	}
	return out, nil
}

func (a *admin) RevokeGrant(_ context.Context, in *agentidv1.RevokeGrantRequest) (*agentidv1.RevokeGrantResponse, error) {
	before := a.d.cache.Stats().Entries
	g, err := a.d.consent.Revoke(in.GetId(), "revoked by the user")
	if err != nil {
		return nil, status.Error(codes.NotFound, "no grant "+in.GetId())
	}
	return &agentidv1.RevokeGrantResponse{Grant: grantProto(g), PurgedTokens: int32(max(0, before-a.d.cache.Stats().Entries))}, nil
}

func consentProto(r consent.Request) *agentidv1.ConsentRequest {
	return &agentidv1.ConsentRequest{Id: r.ID, AgentName: r.AgentName, AgentAppId: r.AgentAppID, Mode: r.Mode, Resource: r.Resource,
		Scopes: r.Scopes, TaskId: r.TaskID, Justification: r.Justification, Pid: int32(r.Process.PID), ExePath: r.Process.ExePath,
		ExeSha256Prefix: r.Process.SHA256Prefix, Chain: r.Chain, CreatedAt: timestamppb.New(r.CreatedAt)}
}

func (a *admin) ListConsentRequests(context.Context, *agentidv1.ListConsentRequestsRequest) (*agentidv1.ListConsentRequestsResponse, error) {
	out := &agentidv1.ListConsentRequestsResponse{}
	for _, r := range a.d.consent.Pending() {
		out.Requests = append(out.Requests, consentProto(r))
	}
	return out, nil
}

func (a *admin) WatchConsentRequests(_ *agentidv1.ListConsentRequestsRequest, stream agentidv1.Admin_WatchConsentRequestsServer) error {
	ch, stop := a.d.consent.Subscribe()
	defer stop()
	for _, r := range a.d.consent.Pending() {
		if err := stream.Send(consentProto(r)); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case r, ok := <-ch:
			if !ok {
				return nil
			}
			if err := stream.Send(consentProto(r)); err != nil {
				return err
			}
		}
	}
}

// refuseFromAgentTree keeps the user's decisions the user's: who may act for them (consent approvals and resets) and
// whom the daemon acts for (a sign-in, which signs in whoever completes it: an agent could otherwise sign in an
// account of its choosing and have every agent act for that one). The caller must not be an agent, nor run inside
// one's process tree. The agentidd CLI passes the admin gate wherever it runs, so without this an agent could run
// `agentidd consent approve` or `agentidd login` itself.
func (a *admin) refuseFromAgentTree(ctx context.Context, what string) error {
	peer, ok := ipc.PeerFromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, what+" needs peer credentials")
	}
	if peer.PID == os.Getpid() {
		// The daemon's own process is no agent's child. (It calls itself only in in-process tests, where it also
		// plays the agent.)
		return nil
	}
	if agent, isAgent := a.d.broker.AgentInAncestry(peer.PID); isAgent {
		a.d.log.Warn("refused a user decision from inside an agent's process tree", "what", what, "pid", peer.PID, "agent", agent)
		return status.Errorf(codes.PermissionDenied,
			"%s must come from the user: this command runs inside the process tree of agent %s; run it from your own terminal (or answer the prompt)", what, agent)
	}
	return nil
}

func (a *admin) DecideConsent(ctx context.Context, in *agentidv1.DecideConsentRequest) (*agentidv1.DecideConsentResponse, error) {
	if in.GetAllow() {
		if err := a.refuseFromAgentTree(ctx, "consent"); err != nil {
			return nil, err
		}
	}
	var dur time.Duration
	if in.GetDuration() != nil {
		dur = in.GetDuration().AsDuration()
	}
	g, err := a.d.consent.Decide(in.GetId(), in.GetAllow(), dur, "terminal")
	if err != nil {
		if errors.Is(err, consent.ErrNoSuchRequest) {
			return nil, status.Error(codes.NotFound, "no pending consent request "+in.GetId())
		}
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !in.GetAllow() {
		return &agentidv1.DecideConsentResponse{}, nil
	}
	return &agentidv1.DecideConsentResponse{Grant: grantProto(g)}, nil
}

func (a *admin) ResetConsent(ctx context.Context, _ *agentidv1.ResetConsentRequest) (*agentidv1.ResetConsentResponse, error) {
	if err := a.refuseFromAgentTree(ctx, "consent"); err != nil {
		return nil, err
	}
	a.d.consent.ResetDenies()
	peer, _ := ipc.PeerFromContext(ctx) // refuseFromAgentTree has checked it is there
	_, _ = a.d.audit.Append(audit.Record{Event: audit.EventConsentReset, Outcome: audit.OutcomeOK, User: a.d.signedInUser(),
		Reason: "remembered denials cleared", Peer: a.d.adminPeer(peer)})
	return &agentidv1.ResetConsentResponse{}, nil
}

// maxAuditTail bounds one AuditTail answer (records are ~700 bytes; gRPC's default message limit is 4 MiB).
const maxAuditTail = 1000

func (a *admin) AuditTail(_ context.Context, in *agentidv1.AuditTailRequest) (*agentidv1.AuditTailResponse, error) {
	// At most maxAuditTail records per call: a bigger ask gets that many, not the default.
	n := min(int(in.GetN()), maxAuditTail)
	if n <= 0 {
		n = 20
	}
	// Records are buffered for the fast path; what the user asks to see must include the latest.
	if err := a.d.audit.Sync(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	lines, err := audit.Tail(a.d.auditPath(), n)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out := &agentidv1.AuditTailResponse{}
	for _, line := range lines {
		var r audit.Record
		if json.Unmarshal(line, &r) != nil {
			// A damaged line is shown for what it is, as JSON like the rest, instead of failing the whole tail. Quoted
			// as records are: whoever damaged it chose its bytes, and a C1 or bidi control must not reach the terminal.
			out.Lines = append(out.Lines, `{"unreadable_line":`+audit.Quote(string(line[:min(len(line), 200)]))+
				`,"hint":"not an audit record: run `+"`agentidd audit verify`"+`"}`)
			continue
		}
		b, err := json.Marshal(r)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		out.Lines = append(out.Lines, string(b))
	}
	return out, nil
}

func (a *admin) AuditVerify(context.Context, *agentidv1.AuditVerifyRequest) (*agentidv1.AuditVerifyResponse, error) {
	if err := a.d.audit.Sync(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	n, err := a.d.verifyAudit()
	out := &agentidv1.AuditVerifyResponse{Records: int64(n)}
	if err != nil {
		out.Error = err.Error()
	}
	return out, nil
}

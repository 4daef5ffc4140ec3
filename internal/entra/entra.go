// Package entra wraps MSAL Go for the two halves of an agent token: the user's sign-in (a public client) and the agent
// identity exchanges (confidential clients). It is the only package that talks to the identity provider, and the only
// place where IdP errors are classified (see Classify).
package entra

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
)

// TokenExchangeScope is the audience of the blueprint's exchange token (Agent ID step 1).
const TokenExchangeScope = "api://AzureADTokenExchange/.default"

// Config describes one tenant's sign-in app and blueprint.
type Config struct {
	Authority      string // https://host/tenant
	ClientID       string // the public client the user signs in to
	BlueprintAppID string
	UserScopes     []string // the delegated scope on the blueprint, e.g. api://<blueprint>/access_as_user
	// HTTPClient is used for every call. In dev mode it trusts the emulator's CA; otherwise it is the default client.
	HTTPClient *http.Client
	// DevAuthority disables MSAL's instance discovery, which would otherwise ask Microsoft's public discovery host about a
	// non-Microsoft authority and fail offline (ENTRA-NOTES.md §6).
	DevAuthority bool
	// Blobs persists MSAL's caches (the user's refresh token, the blueprint's exchange tokens) encrypted.
	Blobs BlobStore
	// BlueprintSecret returns the blueprint's client secret; it is read on every new exchange so that a rotated secret
	// is used from the next request on.
	BlueprintSecret func() (string, error)
}

// BlobStore keeps opaque MSAL cache blobs. The daemon backs it with the encrypted store.
type BlobStore interface {
	LoadBlob(name string) ([]byte, error) // nil, nil when absent
	SaveBlob(name string, data []byte) error
}

// Account is the signed-in user.
type Account struct {
	UPN  string
	OID  string
	msal public.Account
}

// DeviceCodePrompt is what the user is told to do.
type DeviceCodePrompt struct {
	Message, VerificationURI, UserCode string
	ExpiresAt                          time.Time
}

// Result is one access token as received.
type Result struct {
	AccessToken string
	ExpiresAt   time.Time // MSAL computes it from the local receive time + expires_in
	RefreshAt   time.Time // from refresh_in, zero when the IdP did not send it
	Scopes      []string
}

// Client owns the MSAL clients for one configuration.
type Client struct {
	cfg Config
	pub public.Client

	mu      sync.Mutex
	account *Account

	// userSem lets one silent acquisition of the user's token run at a time. When that token is due for renewal,
	// concurrent exchanges would each redeem the same refresh token, and an IdP that rotates refresh tokens treats the
	// second redemption as theft and revokes the whole family (the emulator does, docs/emulator.md): a refresh storm
	// signed the user out. Serialised, the first renews and the rest find the new token in MSAL's cache.
	userSem chan struct{}

	blueprintMu sync.Mutex
	blueprint   *confidential.Client
}

// New builds the public client; confidential clients are built lazily per agent.
func New(cfg Config) (*Client, error) {
	if !strings.HasPrefix(cfg.Authority, "https://") {
		return nil, fmt.Errorf("authority %q must be an https URL", cfg.Authority)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	opts := []public.Option{
		public.WithAuthority(cfg.Authority),
		public.WithHTTPClient(cfg.HTTPClient),
		public.WithClientCapabilities([]string{"cp1"}),
	}
	if cfg.Blobs != nil {
		opts = append(opts, public.WithCache(&blobCache{store: cfg.Blobs, name: "public/" + cfg.ClientID}))
	}
	if cfg.DevAuthority {
		opts = append(opts, public.WithInstanceDiscovery(false))
	}
	pub, err := public.New(cfg.ClientID, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating MSAL public client: %w", err)
	}
	return &Client{cfg: cfg, pub: pub, userSem: make(chan struct{}, 1)}, nil
}

// RestoreAccount picks up a sign-in persisted by an earlier run.
func (c *Client) RestoreAccount(ctx context.Context) (*Account, error) {
	accounts, err := c.pub.Accounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading MSAL accounts: %w", err)
	}
	if len(accounts) == 0 {
		return nil, nil
	}
	a := &Account{UPN: accounts[0].PreferredUsername, OID: accounts[0].LocalAccountID, msal: accounts[0]}
	c.mu.Lock()
	c.account = a
	c.mu.Unlock()
	return a, nil
}

// Account returns the signed-in user, or nil.
func (c *Client) Account() *Account {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.account
}

// LoginDeviceCode runs the device-code flow; show is called once with the instruction.
func (c *Client) LoginDeviceCode(ctx context.Context, show func(DeviceCodePrompt)) (*Account, error) {
	dc, err := c.pub.AcquireTokenByDeviceCode(ctx, c.cfg.UserScopes)
	if err != nil {
		return nil, Classify(err)
	}
	show(DeviceCodePrompt{Message: dc.Result.Message, VerificationURI: dc.Result.VerificationURL, UserCode: dc.Result.UserCode, ExpiresAt: dc.Result.ExpiresOn})
	res, err := dc.AuthenticationResult(ctx)
	if err != nil {
		return nil, Classify(err)
	}
	a := &Account{UPN: res.Account.PreferredUsername, OID: res.Account.LocalAccountID, msal: res.Account}
	c.mu.Lock()
	c.account = a
	c.mu.Unlock()
	return a, nil
}

// ErrNotSignedIn means no user has signed in (or the sign-in was removed).
var ErrNotSignedIn = errors.New("no user is signed in")

// ErrNoCredential is wrapped by Config.BlueprintSecret's error when no blueprint credential is stored: a local setup
// step the user has to take, not an identity-provider failure.
var ErrNoCredential = errors.New("no credential stored")

// UserToken returns the user's token for the blueprint (the OBO assertion), refreshing it silently when needed. It never
// leaves the daemon.
func (c *Client) UserToken(ctx context.Context) (string, error) {
	a := c.Account()
	if a == nil {
		return "", ErrNotSignedIn
	}
	select {
	case c.userSem <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-c.userSem }()
	res, err := c.pub.AcquireTokenSilent(ctx, c.cfg.UserScopes, public.WithSilentAccount(a.msal))
	if err != nil {
		e := Classify(err)
		if e.Class == ClassPermanent && e.Subject == SubjectAgent {
			// The client refused here is the sign-in app (disabled, deleted, its registration changed), not an agent
			// identity: the codes are the same, the principal is not. Every agent fails alike until the user's sign-in
			// is mended, so the purge and the advice belong to the user.
			user := *e
			user.Subject = SubjectUser
			return "", &user
		}
		return "", e
	}
	return res.AccessToken, nil
}

// Logout forgets the user's sign-in (MSAL cache included).
func (c *Client) Logout(ctx context.Context) error {
	c.mu.Lock()
	a := c.account
	c.account = nil
	c.mu.Unlock()
	if a == nil {
		return nil
	}
	if err := c.pub.RemoveAccount(ctx, a.msal); err != nil {
		return fmt.Errorf("removing MSAL account: %w", err)
	}
	return nil
}

// blueprintClient is built on first use; the secret is re-read each time the client is rebuilt (see ResetCredentials).
func (c *Client) blueprintClient() (*confidential.Client, error) {
	c.blueprintMu.Lock()
	defer c.blueprintMu.Unlock()
	if c.blueprint != nil {
		return c.blueprint, nil
	}
	if c.cfg.BlueprintSecret == nil {
		return nil, errors.New("no blueprint credential configured")
	}
	secret, err := c.cfg.BlueprintSecret()
	if err != nil {
		return nil, err
	}
	cred, err := blueprintCredential(secret)
	if err != nil {
		return nil, err
	}
	opts := []confidential.Option{
		confidential.WithHTTPClient(c.cfg.HTTPClient),
		confidential.WithClientCapabilities([]string{"cp1"}),
	}
	if c.cfg.Blobs != nil {
		opts = append(opts, confidential.WithCache(&blobCache{store: c.cfg.Blobs, name: blueprintCacheName(c.cfg.BlueprintAppID)}))
	}
	if c.cfg.DevAuthority {
		opts = append(opts, confidential.WithInstanceDiscovery(false))
	}
	cl, err := confidential.New(c.cfg.Authority, c.cfg.BlueprintAppID, cred, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating blueprint client: %w", err)
	}
	c.blueprint = &cl
	return c.blueprint, nil
}

// ResetCredentials drops the blueprint client and its cached exchange tokens, so the next exchange reads the (rotated)
// credential again and really presents it: a cached exchange token would otherwise keep the old secret "working" until
// it expires, and the old secret would be deleted without the new one ever having been tried.
func (c *Client) ResetCredentials() {
	c.blueprintMu.Lock()
	defer c.blueprintMu.Unlock()
	c.blueprint = nil
	if c.cfg.Blobs != nil {
		_ = c.cfg.Blobs.SaveBlob(blueprintCacheName(c.cfg.BlueprintAppID), nil)
	}
}

func blueprintCacheName(appID string) string { return "blueprint/" + appID }

// exchangeToken is Agent ID step 1: the blueprint's token for api://AzureADTokenExchange with fmi_path = the agent
// identity. MSAL caches it per fmi_path.
func (c *Client) exchangeToken(ctx context.Context, agentAppID string) (string, error) {
	bp, err := c.blueprintClient()
	if err != nil {
		return "", err
	}
	res, err := bp.AcquireTokenByCredential(ctx, []string{TokenExchangeScope}, confidential.WithFMIPath(agentAppID))
	if err != nil {
		return "", Classify(err)
	}
	return res.AccessToken, nil
}

// agentClient builds a fresh confidential client for one exchange. The daemon's serving cache is authoritative for agent
// tokens; MSAL's OBO cache, keyed by the user assertion, would hand a proactive refresh the same old token (and hide a
// revocation until five minutes before expiry), and MSAL cannot clear it from outside (its partitioned cache does not
// round-trip through cache.ExportReplace). The price is one metadata GET per exchange, which happens once per token
// lifetime per key.
func (c *Client) agentClient(agentAppID string) (confidential.Client, error) {
	cred := confidential.NewCredFromAssertionCallback(func(ctx context.Context, _ confidential.AssertionRequestOptions) (string, error) {
		return c.exchangeToken(ctx, agentAppID)
	})
	opts := []confidential.Option{
		confidential.WithHTTPClient(c.cfg.HTTPClient),
		confidential.WithClientCapabilities([]string{"cp1"}),
	}
	if c.cfg.DevAuthority {
		opts = append(opts, confidential.WithInstanceDiscovery(false))
	}
	cl, err := confidential.New(c.cfg.Authority, agentAppID, cred, opts...)
	if err != nil {
		return confidential.Client{}, fmt.Errorf("creating agent identity client: %w", err)
	}
	return cl, nil
}

// OnBehalfOf is Agent ID step 2b: the agent identity exchanges the user's token for a resource token whose subject is
// the user and whose actor (azp) is the agent identity.
func (c *Client) OnBehalfOf(ctx context.Context, agentAppID string, scopes []string, claims string) (Result, error) {
	userToken, err := c.UserToken(ctx)
	if err != nil {
		return Result{}, err
	}
	cl, err := c.agentClient(agentAppID)
	if err != nil {
		return Result{}, err
	}
	var opts []confidential.AcquireOnBehalfOfOption
	if claims != "" {
		opts = append(opts, confidential.WithClaims(claims))
	}
	res, err := cl.AcquireTokenOnBehalfOf(ctx, userToken, scopes, opts...)
	if err != nil {
		return Result{}, Classify(err)
	}
	return Result{AccessToken: res.AccessToken, ExpiresAt: res.ExpiresOn, RefreshAt: res.Metadata.RefreshOn, Scopes: res.GrantedScopes}, nil
}

// AppOnly is Agent ID step 2a: the agent identity acts on its own authority.
func (c *Client) AppOnly(ctx context.Context, agentAppID string, scopes []string, claims string) (Result, error) {
	cl, err := c.agentClient(agentAppID)
	if err != nil {
		return Result{}, err
	}
	var opts []confidential.AcquireByCredentialOption
	if claims != "" {
		opts = append(opts, confidential.WithClaims(claims))
	}
	res, err := cl.AcquireTokenByCredential(ctx, scopes, opts...)
	if err != nil {
		return Result{}, Classify(err)
	}
	return Result{AccessToken: res.AccessToken, ExpiresAt: res.ExpiresOn, RefreshAt: res.Metadata.RefreshOn, Scopes: res.GrantedScopes}, nil
}

// blobCache persists one MSAL client's cache as an opaque blob.
type blobCache struct {
	store BlobStore
	name  string
}

func (b *blobCache) Replace(ctx context.Context, u cache.Unmarshaler, _ cache.ReplaceHints) error {
	data, err := b.store.LoadBlob(b.name)
	if err != nil {
		return fmt.Errorf("loading MSAL cache %s: %w", b.name, err)
	}
	if len(data) == 0 {
		return nil
	}
	return u.Unmarshal(data)
}

func (b *blobCache) Export(ctx context.Context, m cache.Marshaler, _ cache.ExportHints) error {
	data, err := m.Marshal()
	if err != nil {
		return err
	}
	return b.store.SaveBlob(b.name, data)
}

// blueprintCredential is a client secret, or a certificate credential when the stored value is PEM (certificate and
// unencrypted RSA key, as `agentidd secret set --cert` imports it). The error never quotes the value.
func blueprintCredential(secret string) (confidential.Credential, error) {
	if !strings.HasPrefix(strings.TrimSpace(secret), "-----BEGIN") {
		cred, err := confidential.NewCredFromSecret(secret)
		if err != nil {
			return confidential.Credential{}, errors.New("blueprint credential: empty or invalid client secret")
		}
		return cred, nil
	}
	certs, key, err := confidential.CertFromPEM([]byte(secret), "")
	if err != nil {
		return confidential.Credential{}, errors.New("blueprint credential: the stored PEM has no usable certificate and key")
	}
	cred, err := confidential.NewCredFromCert(certs, key)
	if err != nil {
		return confidential.Credential{}, fmt.Errorf("blueprint certificate credential: %w", err)
	}
	return cred, nil
}

//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dbus "github.com/godbus/dbus/v5"
	keyring "github.com/zalando/go-keyring"

	"github.com/agentidd/agentidd/platform"
)

func init() {
	platform.RegisterOSSecretStore(func(string) (platform.SecretStore, error) {
		return platform.NewKeyringSecretStore(&SecretService{Service: platform.SecretService}, 0), nil
	})
}

// backendName is SecretStoreUnavailableError.Backend for this package.
const backendName = "Secret Service"

func unavailable(reason, remedy string, err error) error {
	return &platform.SecretStoreUnavailableError{Backend: backendName, Reason: reason, Remedy: remedy, Err: err}
}

const (
	secretsName      = "org.freedesktop.secrets"
	secretsPath      = dbus.ObjectPath("/org/freedesktop/secrets")
	serviceIface     = "org.freedesktop.Secret.Service"
	collectionIface  = "org.freedesktop.Secret.Collection"
	loginCollection  = dbus.ObjectPath("/org/freedesktop/secrets/collection/login")
	errNameUnknown   = "org.freedesktop.DBus.Error.ServiceUnknown"
	errNameNoOwner   = "org.freedesktop.DBus.Error.NameHasNoOwner"
	errNameIsLocked  = "org.freedesktop.Secret.Error.IsLocked"
	errNameNoReply   = "org.freedesktop.DBus.Error.NoReply"
	errNameTimeout   = "org.freedesktop.DBus.Error.Timeout"
	errNameNoObject  = "org.freedesktop.DBus.Error.UnknownObject"
	errNameNoSuchObj = "org.freedesktop.Secret.Error.NoSuchObject"
)

// The remedies name the config opt-out last: the OS store is the safer home.
const (
	fileOptIn = `or, accepting weaker protection, set secret_store = "file" in agentidd's config (see docs/secrets.md)`

	remedyNoBus = "run agentidd inside your login session (the systemd user unit gets DBUS_SESSION_BUS_ADDRESS from it); " +
		"on a headless machine start a session bus and keyring first, e.g. " +
		`dbus-run-session -- sh -c 'printf "%s\n" "$KEYRING_PASSWORD" | gnome-keyring-daemon --unlock --components=secrets; exec agentidd run'; ` +
		fileOptIn
	remedyNoService = "install and start a Secret Service provider: apt-get install gnome-keyring, then " +
		"gnome-keyring-daemon --start --components=secrets (or enable KeePassXC's Secret Service integration); " +
		fileOptIn
	remedyLocked = "unlock your keyring (log in to the desktop, or open Passwords and Keys / seahorse and unlock it; on a headless machine: " +
		`printf "%s\n" "$KEYRING_PASSWORD" | gnome-keyring-daemon --replace --unlock --components=secrets), then retry; ` +
		fileOptIn
	remedyNoCollection = "create a default keyring: open Passwords and Keys (seahorse) and create a \"login\" keyring, or on a headless machine run " +
		`printf "%s\n" "$KEYRING_PASSWORD" | gnome-keyring-daemon --unlock --components=secrets once; ` +
		fileOptIn
	remedyGeneric = "check that your keyring is unlocked and its Secret Service is running, then retry; " + fileOptIn
	remedyTimeout = "the Secret Service may be waiting on an unlock prompt nobody can see: unlock your keyring and retry; " + fileOptIn
)

// DefaultSecretServiceTimeout bounds one Secret Service operation. go-keyring
// waits without limit for a prompt to complete, and a daemon must not.
const DefaultSecretServiceTimeout = 10 * time.Second

// SecretService stores strings in the session's Secret Service
// (gnome-keyring, KWallet, KeePassXC) through go-keyring, under one service
// name. Before each call it checks over its own D-Bus connection that the bus
// is there, something provides org.freedesktop.secrets and the collection
// go-keyring will use is unlocked: go-keyring would otherwise autolaunch a
// bus or block on an unlock prompt that a headless daemon can never answer.
type SecretService struct {
	Service string        // go-keyring service attribute, e.g. "agentidd"
	Timeout time.Duration // per operation; 0 means DefaultSecretServiceTimeout

	mu       sync.Mutex
	provider string // process name of the Secret Service, once seen
}

var _ platform.KeyringBackend = (*SecretService)(nil)

// KeyringGet returns the value of item, or platform.ErrSecretNotFound.
func (s *SecretService) KeyringGet(item string) (string, error) {
	return s.do(func() (string, error) { return keyring.Get(s.Service, item) })
}

// KeyringSet stores value under item, replacing any previous value.
func (s *SecretService) KeyringSet(item, value string) error {
	_, err := s.do(func() (string, error) { return "", keyring.Set(s.Service, item, value) })
	return err
}

// KeyringDelete removes item; platform.ErrSecretNotFound when it is absent.
func (s *SecretService) KeyringDelete(item string) error {
	_, err := s.do(func() (string, error) { return "", keyring.Delete(s.Service, item) })
	return err
}

// Describe names the backend and, once reached, the program behind it:
// "Secret Service (gnome-keyring)".
func (s *SecretService) Describe() string {
	if p := s.Provider(); p != "" {
		return backendName + " (" + p + ")"
	}
	return backendName
}

// Provider names the program behind org.freedesktop.secrets, e.g.
// "gnome-keyring", or "" if it has not been reached yet.
func (s *SecretService) Provider() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.provider
}

func (s *SecretService) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return DefaultSecretServiceTimeout
}

func (s *SecretService) do(op func() (string, error)) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
	defer cancel()
	if err := s.preflight(ctx); err != nil {
		return "", err
	}
	// go-keyring takes no context; if it hangs (a prompt appeared after the
	// preflight) the goroutine is abandoned. It shares nothing with us but
	// the buffered channel.
	type result struct {
		v   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := op()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, classify(r.err)
	case <-ctx.Done():
		return "", unavailable(fmt.Sprintf("the Secret Service did not answer within %s", s.timeout()), remedyTimeout, nil)
	}
}

// preflight checks, without side effects, that a go-keyring call can
// succeed without prompting.
func (s *SecretService) preflight(ctx context.Context) error {
	// NoAutoStartup: never spawn dbus-launch from a daemon.
	conn, err := dbus.SessionBusPrivateNoAutoStartup(dbus.WithContext(ctx))
	if err != nil {
		return unavailable("no D-Bus session bus", remedyNoBus, err)
	}
	defer conn.Close()
	if err := conn.Auth(nil); err != nil {
		return unavailable("cannot authenticate to the D-Bus session bus", remedyNoBus, err)
	}
	if err := conn.Hello(); err != nil {
		return unavailable("the D-Bus session bus did not answer", remedyNoBus, err)
	}

	bus := conn.BusObject()
	var owned bool
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, secretsName).Store(&owned); err != nil {
		return classify(err)
	}
	if !owned {
		var activatable []string
		if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.ListActivatableNames", 0).Store(&activatable); err != nil {
			return classify(err)
		}
		if !slices.Contains(activatable, secretsName) {
			return unavailable("nothing provides "+secretsName+" on the session bus", remedyNoService, nil)
		}
	}

	svc := conn.Object(secretsName, secretsPath)
	var collections []dbus.ObjectPath
	if err := getProperty(ctx, svc, serviceIface, "Collections", &collections); err != nil {
		return classify(err)
	}
	s.noteProvider(ctx, conn)

	// The same choice go-keyring makes: "login" when it exists, else the
	// collection behind the "default" alias.
	coll := loginCollection
	if !slices.Contains(collections, loginCollection) {
		if err := svc.CallWithContext(ctx, serviceIface+".ReadAlias", 0, "default").Store(&coll); err != nil {
			return classify(err)
		}
		if coll == "/" || coll == "" {
			return unavailable("the Secret Service has no default keyring", remedyNoCollection, nil)
		}
	}
	var locked bool
	if err := getProperty(ctx, conn.Object(secretsName, coll), collectionIface, "Locked", &locked); err != nil {
		return classify(err)
	}
	if locked {
		return unavailable(fmt.Sprintf("the keyring %s is locked", collectionName(coll)), remedyLocked, nil)
	}
	return nil
}

func getProperty(ctx context.Context, obj dbus.BusObject, iface, prop string, out any) error {
	var v dbus.Variant
	if err := obj.CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, iface, prop).Store(&v); err != nil {
		return err
	}
	if err := dbus.Store([]any{v.Value()}, out); err != nil {
		return fmt.Errorf("property %s.%s: %w", iface, prop, err)
	}
	return nil
}

// noteProvider remembers which program serves the secrets, for Describe.
// Best effort: a failure only leaves the name generic.
func (s *SecretService) noteProvider(ctx context.Context, conn *dbus.Conn) {
	if s.Provider() != "" {
		return
	}
	var pid uint32
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixProcessID", 0, secretsName).Store(&pid); err != nil {
		return
	}
	comm, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/comm")
	if err != nil {
		return
	}
	name := providerName(strings.TrimSpace(string(comm)))
	s.mu.Lock()
	s.provider = name
	s.mu.Unlock()
}

// providerName turns a kernel comm (truncated to 15 bytes) into the name a
// user knows.
func providerName(comm string) string {
	switch {
	case strings.HasPrefix(comm, "gnome-keyring"):
		return "gnome-keyring"
	case strings.HasPrefix(comm, "kwalletd"), strings.HasPrefix(comm, "ksecretd"):
		return "KWallet"
	case strings.HasPrefix(comm, "keepassxc"):
		return "KeePassXC"
	case comm == "":
		return ""
	default:
		return comm
	}
}

func collectionName(p dbus.ObjectPath) string {
	s := string(p)
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return strconv.Quote(s[i+1:])
	}
	return strconv.Quote(s)
}

// classify maps go-keyring and D-Bus errors to platform.ErrSecretNotFound
// or *platform.SecretStoreUnavailableError. Anything else is returned as it is.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, keyring.ErrNotFound) {
		return platform.ErrSecretNotFound
	}
	if errors.Is(err, keyring.ErrSetDataTooBig) {
		return fmt.Errorf("secret too big for the Secret Service: %w", err)
	}
	var name string
	var de dbus.Error
	var dep *dbus.Error
	switch {
	case errors.As(err, &de):
		name = de.Name
	case errors.As(err, &dep):
		name = dep.Name
	}
	switch name {
	case errNameUnknown, errNameNoOwner:
		return unavailable("nothing provides "+secretsName+" on the session bus", remedyNoService, err)
	case errNameIsLocked:
		return unavailable("the keyring is locked", remedyLocked, err)
	case errNameNoReply, errNameTimeout:
		return unavailable("the Secret Service did not reply", remedyTimeout, err)
	case errNameNoObject, errNameNoSuchObj:
		return unavailable("the Secret Service has no default keyring", remedyNoCollection, err)
	case "":
	default:
		return unavailable("the Secret Service refused the request", remedyGeneric, err)
	}
	// go-keyring reports a dismissed unlock prompt with this text only.
	if strings.Contains(err.Error(), "failed to unlock correct collection") {
		return unavailable("the keyring is locked and the unlock prompt was dismissed", remedyLocked, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return unavailable("the D-Bus session bus did not answer in time", remedyTimeout, err)
	}
	return fmt.Errorf("secret service: %w", err)
}

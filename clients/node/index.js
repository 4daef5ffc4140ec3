'use strict';
// Node client for agentidd: ask the local daemon for a token for an agent. The daemon attests the calling process, so
// run the agent under `agentidd exec --agent NAME -- node agent.js` or bind its executable in the agentidd config.
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'agentid', 'v1', 'agentid.proto');
// Every call must carry this metadata; the daemon refuses calls without it (a browser or naive proxy cannot add it).
const GUARD_HEADER = 'agentidd-client';
const GUARD_VALUE = '1';

let pkg;
function proto() {
  if (!pkg) {
    const def = protoLoader.loadSync(PROTO, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
    pkg = grpc.loadPackageDefinition(def).agentid.v1;
  }
  return pkg;
}

// Longest socket path each OS's sun_path holds, minus the terminating NUL (ipc/pure.go).
const MAX_SUN_PATH = { darwin: 103, linux: 107 };

// fitSocketPath mirrors ipc.fitSocketPath: the first candidate that fits in maxLen bytes, else a short path under
// /tmp/agentidd-<uid>/ named by a hash of the first candidate (never a truncated path).
function fitSocketPath(cands, uid, maxLen) {
  for (const c of cands) if (c && Buffer.byteLength(c) <= maxLen) return c;
  const h = crypto.createHash('sha256').update(cands.length ? cands[0] : '').digest('hex').slice(0, 12);
  return path.posix.join('/tmp', 'agentidd-' + uid, h + '.sock');
}

// endpoint is the Go client's client.Endpoint (ipc.DefaultPath): $AGENTIDD_SOCKET, else the per-OS default --
//   Linux: $XDG_RUNTIME_DIR/agentidd/agentidd.sock, else <$XDG_CACHE_HOME or $HOME/.cache>/agentidd/run/agentidd.sock;
//   macOS: $HOME/Library/Application Support/agentidd/agentidd.sock, else $TMPDIR/agentidd/agentidd.sock
//          (XDG_RUNTIME_DIR is not used there);
// either falls back to /tmp/agentidd-<uid>/<hash>.sock when no candidate fits in sun_path. On Windows the default is
// the pipe \\.\pipe\agentidd-<user SID>; Node cannot read the SID without a native module, so AGENTIDD_SOCKET must
// be set there (`agentidd exec` sets it). env and platform are parameters for tests.
function endpoint(env = process.env, platform = process.platform) {
  if (env.AGENTIDD_SOCKET) return env.AGENTIDD_SOCKET;
  if (platform === 'win32') {
    throw new Error('agentidd: set AGENTIDD_SOCKET to the daemon\'s pipe (agentidd exec sets it for you)');
  }
  const uid = process.geteuid ? process.geteuid() : -1;
  const cands = [];
  if (platform === 'darwin') {
    if (env.HOME) cands.push(path.posix.join(env.HOME, 'Library', 'Application Support', 'agentidd', 'agentidd.sock'));
    if (env.TMPDIR && path.posix.isAbsolute(env.TMPDIR)) {
      cands.push(path.posix.join(env.TMPDIR, 'agentidd', 'agentidd.sock'));
    }
    return fitSocketPath(cands, uid, MAX_SUN_PATH.darwin);
  }
  if (env.XDG_RUNTIME_DIR && path.posix.isAbsolute(env.XDG_RUNTIME_DIR)) {
    cands.push(path.posix.join(env.XDG_RUNTIME_DIR, 'agentidd', 'agentidd.sock'));
  }
  // os.UserCacheDir: $XDG_CACHE_HOME (must be absolute), else $HOME/.cache.
  const cache = env.XDG_CACHE_HOME ? (path.posix.isAbsolute(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : '')
    : (env.HOME ? env.HOME + '/.cache' : '');
  if (cache) cands.push(path.posix.join(cache, 'agentidd', 'run', 'agentidd.sock'));
  if (!cands.length) {
    throw new Error('agentidd: neither XDG_RUNTIME_DIR nor a user cache dir is set; set AGENTIDD_SOCKET');
  }
  return fitSocketPath(cands, uid, MAX_SUN_PATH.linux);
}

// checkSocket refuses a socket another user could have put there, before anything is sent on it: a fake daemon
// would otherwise receive the agent name, task id and justification and could hand back a token of its choosing.
// The Go client asks the kernel who serves the socket (SO_PEERCRED / LOCAL_PEERCRED) and refuses any uid but its own
// effective uid. Node cannot read peer credentials without a native module, so this checks what guarantees the same
// thing: the daemon's own Listen rule for the socket directory (ipc.checkDir: a real directory, not a symlink, owned
// by this uid, no group or world bits), which leaves no other user (root aside, who is trusted anyway) a way to
// create or swap an entry in it, and a socket (not a symlink or other file) owned by this uid.
//
// Windows is skipped: the endpoint is a named pipe, which has no owner or mode bits to lstat; what guards it is the
// pipe's DACL, set by the daemon (only the user and SYSTEM), and the daemon creating the first instance exclusively
// (a squatter's pipe makes the daemon fail to start). The Go client also checks the pipe server's SID
// (GetNamedPipeServerProcessId); Node cannot without a native module, so a pipe squatted while no daemon runs is not
// detected here.
async function checkSocket(socketPath, platform = process.platform) {
  if (platform === 'win32') return;
  const uid = process.geteuid();
  const dir = path.dirname(socketPath);
  const refuse = (what) => {
    const err = new Error(`agentidd: refusing to use ${socketPath} as uid ${uid}: ${what}; nothing was sent to it ` +
      '(a socket another user could have created is not the daemon)');
    err.code = 'AGENTIDD_UNTRUSTED_SOCKET';
    return err;
  };
  let st;
  try {
    st = await fs.promises.lstat(dir);
  } catch (err) {
    throw refuse(`socket directory ${dir}: ${err.message}`);
  }
  if (!st.isDirectory()) throw refuse(`socket directory ${dir} is not a directory (symlinks are refused)`);
  if (st.uid !== uid) throw refuse(`socket directory ${dir} is owned by uid ${st.uid}, not by this user`);
  if (st.mode & 0o077) {
    const mode = (st.mode & 0o777).toString(8);
    throw refuse(`socket directory ${dir} has mode 0${mode}; it must not be group or world accessible (mode 0700)`);
  }
  try {
    st = await fs.promises.lstat(socketPath);
  } catch (err) {
    throw refuse(err.code === 'ENOENT' ? 'no such socket (is agentidd running?)' : err.message);
  }
  if (!st.isSocket()) throw refuse('it is not a socket (symlinks are refused)');
  if (st.uid !== uid) throw refuse(`the socket is owned by uid ${st.uid}, not by this user`);
}

// Deadlines: a call without a consent wait gets DEFAULT_TIMEOUT_MS; one that waits for consent gets at least the wait
// plus CONSENT_MARGIN_MS, so the daemon's answer (a token, or CONSENT_PENDING when the wait runs out) arrives first.
const DEFAULT_TIMEOUT_MS = 60000;
const CONSENT_MARGIN_MS = 30000;

// callTimeoutMs is the call's deadline in ms from now: the caller's timeoutMs when given, else the default above.
function callTimeoutMs(opts = {}) {
  if (opts.timeoutMs) return opts.timeoutMs;
  const wait = Number(opts.consentWaitSeconds) || 0;
  return wait > 0 ? Math.max(DEFAULT_TIMEOUT_MS, wait * 1000 + CONSENT_MARGIN_MS) : DEFAULT_TIMEOUT_MS;
}

function guard() {
  const md = new grpc.Metadata();
  md.set(GUARD_HEADER, GUARD_VALUE);
  return md;
}

// protoFields decodes one protobuf message into [field number, value] pairs: a Number for a varint, a Buffer for a
// length-delimited field. Enough for google.rpc.Status, Any, ErrorInfo, RetryInfo and Duration; it throws on bytes
// that are not a well-formed message.
function protoFields(buf) {
  const out = [];
  let i = 0;
  const varint = () => {
    let v = 0;
    for (let mul = 1, n = 0; n < 10; n++, mul *= 128) {
      if (i >= buf.length) throw new Error('truncated varint');
      const b = buf[i++];
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
    }
    throw new Error('varint too long');
  };
  while (i < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    switch (key % 8) {
      case 0: out.push([field, varint()]); break;
      case 1: i += 8; break;
      case 2: {
        const n = varint();
        if (i + n > buf.length) throw new Error('truncated field');
        out.push([field, buf.subarray(i, i + n)]);
        i += n;
        break;
      }
      case 5: i += 4; break;
      default: throw new Error('unsupported wire type');
    }
  }
  if (i > buf.length) throw new Error('truncated fixed field');
  return out;
}

const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';
const RETRY_INFO_TYPE = 'type.googleapis.com/google.rpc.RetryInfo';

// detailsOf reads the agentidd details of a gRPC error, as the Go client's Reason, Metadata and RetryDelay do:
// { reason, domain, metadata } from the google.rpc.ErrorInfo and retryDelayMs from the google.rpc.RetryInfo (0 when
// absent) in the grpc-status-details-bin trailer (google.rpc.Status{3: repeated Any{1: type_url, 2: value}}).
function detailsOf(err) {
  const d = { reason: '', domain: '', metadata: {}, retryDelayMs: 0 };
  const bin = err && err.metadata && typeof err.metadata.get === 'function' && err.metadata.get('grpc-status-details-bin');
  if (!bin || !bin.length) return d;
  try {
    for (const [f, any] of protoFields(Buffer.from(bin[0]))) {
      if (f !== 3 || !Buffer.isBuffer(any)) continue;
      let type = '';
      let value = Buffer.alloc(0);
      for (const [af, av] of protoFields(any)) {
        if (af === 1 && Buffer.isBuffer(av)) type = av.toString('utf8');
        if (af === 2 && Buffer.isBuffer(av)) value = av;
      }
      if (type === ERROR_INFO_TYPE) {
        for (const [ef, ev] of protoFields(value)) {
          if (!Buffer.isBuffer(ev)) continue;
          if (ef === 1) d.reason = ev.toString('utf8');
          if (ef === 2) d.domain = ev.toString('utf8');
          if (ef === 3) { // map<string, string> entry {1: key, 2: value}
            let k = '';
            let v = '';
            for (const [mf, mv] of protoFields(ev)) {
              if (mf === 1 && Buffer.isBuffer(mv)) k = mv.toString('utf8');
              if (mf === 2 && Buffer.isBuffer(mv)) v = mv.toString('utf8');
            }
            d.metadata[k] = v;
          }
        }
      } else if (type === RETRY_INFO_TYPE) {
        for (const [rf, rv] of protoFields(value)) {
          if (rf !== 1 || !Buffer.isBuffer(rv)) continue; // retry_delay: Duration{1: seconds, 2: nanos}
          let sec = 0;
          let nanos = 0;
          for (const [df, dv] of protoFields(rv)) {
            if (df === 1 && typeof dv === 'number') sec = dv;
            if (df === 2 && typeof dv === 'number') nanos = dv;
          }
          // A negative Duration arrives as a 10-byte two's-complement varint; no sane delay is that large.
          if (sec < 2 ** 40 && nanos < 1e9) d.retryDelayMs = sec * 1000 + Math.floor(nanos / 1e6);
        }
      }
    }
  } catch {
    // A trailer that is not a well-formed Status (a proxy's, or a bug): no details rather than half-read ones.
    return { reason: '', domain: '', metadata: {}, retryDelayMs: 0 };
  }
  return d;
}

// reasonOf returns the stable agentidd reason (e.g. "CONSENT_PENDING") of a gRPC error, or "".
function reasonOf(err) { return detailsOf(err).reason; }

// modeOf maps opts.mode to the proto enum; anything else is refused rather than silently asking for the default mode.
function modeOf(mode) {
  if (mode === undefined || mode === '') return 'MODE_UNSPECIFIED';
  if (mode === 'obo') return 'MODE_OBO';
  if (mode === 'app') return 'MODE_APP';
  throw new Error(`agentidd: mode must be 'obo' or 'app', not ${JSON.stringify(mode)}`);
}

class Client {
  constructor(socketPath) {
    this.socketPath = socketPath || endpoint();
    this.stub = null; // made after the first checkSocket passes, so nothing connects to an unchecked socket
  }

  // token asks for agent's token for scopes. opts: { consentWaitSeconds, justification, taskId, claims, mode,
  // minTtlSeconds, timeoutMs }. claims is a resource's CAE claims challenge (decoded JSON from WWW-Authenticate); mode
  // is 'obo' (default: the user's authority) or 'app' (the agent identity's own); minTtlSeconds asks for a token valid
  // at least that long (daemon default 60 s). timeoutMs defaults to 60 s, or to consentWaitSeconds + 30 s when longer.
  // A refusal rejects with the gRPC error plus err.reason (docs/errors.md), err.retryDelayMs (the daemon's RetryInfo, 0
  // when none: wait that long before asking again) and err.errorInfo.metadata (request_id, claims, ...).
  async token(agent, scopes, opts = {}) {
    const req = { agent, scopes, justification: opts.justification || '', taskId: opts.taskId || '',
      claims: opts.claims || '', mode: modeOf(opts.mode) };
    if (opts.consentWaitSeconds) req.consentWait = { seconds: String(opts.consentWaitSeconds), nanos: 0 };
    if (opts.minTtlSeconds) req.minTtl = { seconds: String(opts.minTtlSeconds), nanos: 0 };
    const deadline = new Date(Date.now() + callTimeoutMs(opts));
    // Checked before every call, not once: the daemon may have restarted, and the channel reconnects by path.
    await checkSocket(this.socketPath);
    if (!this.stub) {
      this.stub = new (proto().AgentIdentity)('unix:' + this.socketPath, grpc.credentials.createInsecure());
    }
    return new Promise((resolve, reject) => {
      this.stub.GetToken(req, guard(), { deadline }, (err, resp) => {
        if (err) {
          // err.metadata is gRPC's trailer metadata already, so the ErrorInfo goes to err.errorInfo.
          const d = detailsOf(err);
          err.reason = d.reason;
          err.retryDelayMs = d.retryDelayMs;
          err.errorInfo = { reason: d.reason, domain: d.domain, metadata: d.metadata };
          reject(err);
          return;
        }
        const p = resp.principal || {};
        resolve({
          accessToken: resp.accessToken,
          expiresAt: new Date(Number(resp.expiresAt.seconds) * 1000),
          scopes: resp.scopes,
          userOid: p.userOid, userUpn: p.userUpn, agentAppId: p.agentAppId, agentName: p.agentName,
          grantId: resp.grantId,
          fromCache: resp.source === 'TOKEN_SOURCE_CACHE',
        });
      });
    });
  }

  close() { if (this.stub) this.stub.close(); }
}

// token is the one-call form: dial, ask once, close.
async function token(agent, scopes, opts) {
  const c = new Client();
  try { return await c.token(agent, scopes, opts); } finally { c.close(); }
}

module.exports = { Client, token, reasonOf, detailsOf, endpoint, checkSocket, callTimeoutMs, GUARD_HEADER, GUARD_VALUE };

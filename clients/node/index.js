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

// reasonOf returns the stable agentidd reason (e.g. "CONSENT_PENDING") of a gRPC error, or "". It reads the
// google.rpc.ErrorInfo in the status details: Any{type_url, value = ErrorInfo{1: reason, ...}}.
function reasonOf(err) {
  const bin = err && err.metadata && err.metadata.get('grpc-status-details-bin');
  if (!bin || !bin.length) return '';
  const buf = Buffer.from(bin[0]);
  const typeURL = Buffer.from('type.googleapis.com/google.rpc.ErrorInfo');
  let i = buf.indexOf(typeURL);
  if (i < 0) return '';
  i += typeURL.length;
  const varint = () => {
    let v = 0;
    for (let shift = 0; i < buf.length && shift < 28; shift += 7) {
      const b = buf[i++];
      v |= (b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
    return -1;
  };
  if (buf[i++] !== 0x12 || varint() < 0) return ''; // Any.value
  if (buf[i++] !== 0x0a) return ''; // ErrorInfo.reason
  const n = varint();
  if (n < 0 || i + n > buf.length) return '';
  return buf.toString('utf8', i, i + n);
}

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
          err.reason = reasonOf(err);
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

module.exports = { Client, token, reasonOf, endpoint, checkSocket, callTimeoutMs, GUARD_HEADER, GUARD_VALUE };

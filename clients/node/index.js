'use strict';
// Node client for agentidd: ask the local daemon for a token for an agent. The daemon attests the calling process, so
// run the agent under `agentidd exec --agent NAME -- node agent.js` or bind its executable in the agentidd config.
const path = require('path');
const os = require('os');
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

// endpoint mirrors the Go client on Linux and macOS: $AGENTIDD_SOCKET, else $XDG_RUNTIME_DIR/agentidd/agentidd.sock.
function endpoint() {
  if (process.env.AGENTIDD_SOCKET) return process.env.AGENTIDD_SOCKET;
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, 'agentidd', 'agentidd.sock');
  throw new Error('agentidd: set AGENTIDD_SOCKET (agentidd exec sets it for you); home dir ' + os.homedir());
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

class Client {
  constructor(socketPath) {
    const p = socketPath || endpoint();
    this.stub = new (proto().AgentIdentity)('unix:' + p, grpc.credentials.createInsecure());
  }

  // token asks for agent's token for scopes. opts: { consentWaitSeconds, justification, taskId, timeoutMs }.
  token(agent, scopes, opts = {}) {
    const req = { agent, scopes, justification: opts.justification || '', taskId: opts.taskId || '' };
    if (opts.consentWaitSeconds) req.consentWait = { seconds: String(opts.consentWaitSeconds), nanos: 0 };
    const deadline = new Date(Date.now() + (opts.timeoutMs || 60000));
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

  close() { this.stub.close(); }
}

// token is the one-call form: dial, ask once, close.
async function token(agent, scopes, opts) {
  const c = new Client();
  try { return await c.token(agent, scopes, opts); } finally { c.close(); }
}

module.exports = { Client, token, reasonOf, GUARD_HEADER, GUARD_VALUE };

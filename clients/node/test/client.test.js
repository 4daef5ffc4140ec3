'use strict';
// Unit tests of the Node client against a fake daemon; no agentidd needed (Linux and macOS).
//   node --test test/client.test.js
// The fake daemon is a gRPC server that answers every GetToken with a token of its own, behind a proxy at the socket
// path under test that counts connections: a refused socket must see no connection at all, so no request.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { Client, checkSocket, callTimeoutMs, endpoint, GUARD_HEADER, GUARD_VALUE } = require('..');

const PROTO = path.join(__dirname, '..', '..', '..', 'proto', 'agentid', 'v1', 'agentid.proto');
const agentid = grpc.loadPackageDefinition(
  protoLoader.loadSync(PROTO, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true }),
).agentid.v1;

const isRoot = process.platform !== 'win32' && process.geteuid() === 0;
const NOBODY = 65534;

function tempDir(t, mode) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agentidd-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, mode);
  return dir;
}

// fakeDaemon serves AgentIdentity on a private socket and proxies sockPath to it. It records every connection to
// sockPath and every GetToken it answers.
async function fakeDaemon(t, sockPath) {
  const seen = { connections: 0, requests: [] };
  const inner = path.join(tempDir(t, 0o700), 'inner.sock');
  const server = new grpc.Server();
  server.addService(agentid.AgentIdentity.service, {
    GetToken(call, cb) {
      const guard = call.metadata.get(GUARD_HEADER);
      seen.requests.push({ request: call.request, guard, deadline: call.getDeadline() });
      cb(null, {
        accessToken: 'fake-token',
        tokenType: 'Bearer',
        expiresAt: { seconds: String(Math.floor(Date.now() / 1000) + 3600), nanos: 0 },
        scopes: call.request.scopes,
        principal: { userOid: 'user-oid', agentAppId: 'agent-app', agentName: call.request.agent },
        grantId: 'grant-1',
        source: 'TOKEN_SOURCE_IDP',
      });
    },
  });
  await new Promise((resolve, reject) => server.bindAsync('unix:' + inner, grpc.ServerCredentials.createInsecure(),
    (err) => (err ? reject(err) : resolve())));
  const proxy = net.createServer((c) => {
    seen.connections++;
    const up = net.connect(inner);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
    c.pipe(up).pipe(c);
  });
  await new Promise((resolve, reject) => {
    proxy.once('error', reject);
    proxy.listen(sockPath, resolve);
  });
  t.after(() => {
    proxy.close();
    server.forceShutdown();
  });
  return seen;
}

// ask makes one GetToken call through the client with a short deadline, closing the client after.
async function ask(sockPath, opts = {}) {
  const c = new Client(sockPath);
  try {
    return await c.token('test-agent', ['api://files.contoso.example/.default'],
      { justification: 'secret justification', timeoutMs: 5000, ...opts });
  } finally {
    c.close();
  }
}

async function assertRefused(sockPath, seen, pattern) {
  await assert.rejects(ask(sockPath), (err) => {
    assert.strictEqual(err.code, 'AGENTIDD_UNTRUSTED_SOCKET', err.message);
    assert.match(err.message, pattern);
    const named = `${sockPath} as uid ${process.geteuid()}:`;
    assert.ok(err.message.includes(named), `names the path and uid: ${err.message}`);
    return true;
  });
  if (seen) {
    assert.strictEqual(seen.connections, 0, 'the client connected to a refused socket');
    assert.strictEqual(seen.requests.length, 0, 'the fake daemon got a request');
  }
}

const unixOnly = { skip: process.platform === 'win32' && 'named pipes are not checked (see checkSocket)' };

test('socket checks', unixOnly, async (t) => {
  await t.test('a socket in a 0700 directory of ours is used, with the guard header', async (t) => {
    const sock = path.join(tempDir(t, 0o700), 'agentidd.sock');
    const seen = await fakeDaemon(t, sock);
    const tok = await ask(sock);
    assert.strictEqual(tok.accessToken, 'fake-token');
    assert.strictEqual(tok.agentName, 'test-agent');
    assert.strictEqual(seen.requests.length, 1);
    assert.deepStrictEqual(seen.requests[0].guard, [GUARD_VALUE]);
    assert.strictEqual(seen.requests[0].request.justification, 'secret justification');
  });

  await t.test('a group/world-accessible directory is refused before anything is sent', async (t) => {
    for (const mode of [0o755, 0o750, 0o701, 0o777]) {
      const dir = tempDir(t, mode);
      const sock = path.join(dir, 'agentidd.sock');
      const seen = await fakeDaemon(t, sock);
      await assertRefused(sock, seen, new RegExp(`${dir} has mode 0${mode.toString(8)}`));
    }
  });

  await t.test('a symlinked directory is refused', async (t) => {
    const real = tempDir(t, 0o700);
    const seen = await fakeDaemon(t, path.join(real, 'agentidd.sock'));
    const link = path.join(tempDir(t, 0o700), 'link');
    fs.symlinkSync(real, link);
    await assertRefused(path.join(link, 'agentidd.sock'), seen, /is not a directory \(symlinks are refused\)/);
  });

  await t.test('a symlink to a socket is refused', async (t) => {
    const real = path.join(tempDir(t, 0o700), 'agentidd.sock');
    const seen = await fakeDaemon(t, real);
    const link = path.join(tempDir(t, 0o700), 'agentidd.sock');
    fs.symlinkSync(real, link);
    await assertRefused(link, seen, /is not a socket/);
  });

  await t.test('a regular file is refused', async (t) => {
    const file = path.join(tempDir(t, 0o700), 'agentidd.sock');
    fs.writeFileSync(file, '');
    await assertRefused(file, null, /is not a socket/);
  });

  await t.test('a missing socket is reported', async (t) => {
    await assertRefused(path.join(tempDir(t, 0o700), 'agentidd.sock'), null, /no such socket/);
  });

  // Only root can give a file away, so the ownership rules are tested when the tests run as root (as in CI).
  await t.test('a directory owned by another uid is refused', { skip: !isRoot && 'needs root to chown' }, async (t) => {
    const dir = tempDir(t, 0o700);
    const sock = path.join(dir, 'agentidd.sock');
    const seen = await fakeDaemon(t, sock);
    fs.chownSync(dir, NOBODY, NOBODY);
    await assertRefused(sock, seen, new RegExp(`${dir} is owned by uid ${NOBODY}, not by this user`));
  });

  await t.test('a socket owned by another uid is refused', { skip: !isRoot && 'needs root to chown' }, async (t) => {
    const sock = path.join(tempDir(t, 0o700), 'agentidd.sock');
    const seen = await fakeDaemon(t, sock);
    fs.lchownSync(sock, NOBODY, NOBODY);
    await assertRefused(sock, seen, new RegExp(`socket is owned by uid ${NOBODY}, not by this user`));
  });

  await t.test('named pipes are not checked on Windows', async () => {
    await checkSocket('\\\\.\\pipe\\agentidd-S-1-5-21-1', 'win32');
  });
});

test('call deadline', async (t) => {
  await t.test('callTimeoutMs', () => {
    assert.strictEqual(callTimeoutMs(), 60000);
    assert.strictEqual(callTimeoutMs({}), 60000);
    assert.strictEqual(callTimeoutMs({ consentWaitSeconds: 20 }), 60000, 'a short wait keeps the 60 s default');
    assert.strictEqual(callTimeoutMs({ consentWaitSeconds: 120 }), 150000, 'a long wait gets the wait + 30 s');
    assert.strictEqual(callTimeoutMs({ consentWaitSeconds: 600 }), 630000);
    assert.strictEqual(callTimeoutMs({ consentWaitSeconds: 120, timeoutMs: 5000 }), 5000, "the caller's deadline wins");
    assert.strictEqual(callTimeoutMs({ timeoutMs: 90000 }), 90000);
  });

  await t.test('a long consent wait outlives the 60 s default on the wire', unixOnly, async (t) => {
    const sock = path.join(tempDir(t, 0o700), 'agentidd.sock');
    const seen = await fakeDaemon(t, sock);
    const before = Date.now();
    await ask(sock, { consentWaitSeconds: 120, timeoutMs: undefined });
    const r = seen.requests[0];
    assert.strictEqual(r.request.consentWait.seconds, '120');
    const left = new Date(r.deadline).getTime() - before;
    // grpc-timeout on the wire is rounded, so allow a little either side.
    assert.ok(left > 140000 && left < 152000, `deadline ${left} ms after the call, want about 150000`);
  });
});

// A Node agent must be able to answer a resource's CAE claims challenge (else the daemon keeps serving the cached token
// the resource refuses), ask for an app-only token, and ask for a longer-lived token, as the Go client can.
test('request options reach the daemon', unixOnly, async (t) => {
  const sock = path.join(tempDir(t, 0o700), 'agentidd.sock');
  const seen = await fakeDaemon(t, sock);
  const claims = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}';
  await ask(sock, { claims, mode: 'app', minTtlSeconds: 600 });
  let r = seen.requests[0].request;
  assert.strictEqual(r.claims, claims);
  assert.strictEqual(r.mode, 'MODE_APP');
  assert.deepStrictEqual([r.minTtl && r.minTtl.seconds], ['600']);
  await ask(sock, { mode: 'obo' });
  r = seen.requests[1].request;
  assert.strictEqual(r.mode, 'MODE_OBO');
  assert.strictEqual(r.claims, '');
  assert.strictEqual(r.minTtl, null, 'no min_ttl: the daemon default applies');
  await assert.rejects(ask(sock, { mode: 'user' }), /mode/);
  assert.strictEqual(seen.requests.length, 2, 'a bad mode is refused before anything is sent');
});

// google.rpc.Status details as the daemon encodes them (ipc.StatusError, marshalled by Go's protobuf): what the client
// must read is the ErrorInfo reason and metadata and the RetryInfo delay. The first message names the ErrorInfo type URL
// itself, which a scan for that string would take for the detail.
const STATUS_FIXTURES = {
  pending: '0809123477616974696e6720666f7220747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f72496e' +
    '666f1a600a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f72496e666f12340a0f434f4e53454e' +
    '545f50454e44494e47120c6167656e746964642e6465761a130a0a726571756573745f696412057265712d311a300a28747970652e676f6f' +
    '676c65617069732e636f6d2f676f6f676c652e7270632e5265747279496e666f12040a020802',
  unreachable: '080e120869647020646f776e1a4b0a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f72' +
    '496e666f121f0a0f4944505f554e524541434841424c45120c6167656e746964642e6465761a360a28747970652e676f6f676c656170697' +
    '32e636f6d2f676f6f676c652e7270632e5265747279496e666f120a0a0808011080cab5ee01',
  interaction: '080912036d66611a80010a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f72496e666f' +
    '12540a14494e544552414354494f4e5f5245515549524544120c6167656e746964642e6465761a1d0a06636c61696d7312137b226163636' +
    '573735f746f6b656e223a7b7d7d1a0f0a0661616473747312053530303736',
};

test('error details: reason, metadata, retry delay', unixOnly, async (t) => {
  const dir = tempDir(t, 0o700);
  const sock = path.join(dir, 'agentidd.sock');
  const server = new grpc.Server();
  server.addService(agentid.AgentIdentity.service, {
    GetToken(call, cb) {
      const md = new grpc.Metadata();
      md.set('grpc-status-details-bin', Buffer.from(STATUS_FIXTURES[call.request.agent], 'hex'));
      cb({ code: grpc.status.FAILED_PRECONDITION, details: 'refused', metadata: md });
    },
  });
  await new Promise((resolve, reject) => server.bindAsync('unix:' + sock, grpc.ServerCredentials.createInsecure(),
    (err) => (err ? reject(err) : resolve())));
  t.after(() => server.forceShutdown());
  const c = new Client(sock);
  t.after(() => c.close());
  const cases = [
    ['pending', 'CONSENT_PENDING', 2000, { request_id: 'req-1' }],
    ['unreachable', 'IDP_UNREACHABLE', 1500, {}],
    ['interaction', 'INTERACTION_REQUIRED', 0, { claims: '{"access_token":{}}', aadsts: '50076' }],
  ];
  for (const [agent, reason, delay, meta] of cases) {
    await assert.rejects(c.token(agent, ['api://r/.default'], { timeoutMs: 5000 }), (err) => {
      assert.strictEqual(err.reason, reason, agent);
      assert.strictEqual(err.retryDelayMs, delay, agent);
      assert.deepStrictEqual(err.errorInfo && err.errorInfo.metadata, meta, agent);
      return true;
    });
  }
});

test('endpoint mirrors ipc.DefaultPath', async (t) => {
  const uid = process.platform === 'win32' ? -1 : process.geteuid();
  await t.test('AGENTIDD_SOCKET wins', () => {
    const env = { AGENTIDD_SOCKET: '/s/a.sock', XDG_RUNTIME_DIR: '/run/user/1' };
    assert.strictEqual(endpoint(env, 'linux'), '/s/a.sock');
    assert.strictEqual(endpoint(env, 'darwin'), '/s/a.sock');
    assert.strictEqual(endpoint({ AGENTIDD_SOCKET: '\\\\.\\pipe\\x' }, 'win32'), '\\\\.\\pipe\\x');
  });
  await t.test('linux', () => {
    const env = { HOME: '/home/u', XDG_RUNTIME_DIR: '/run/user/1000' };
    assert.strictEqual(endpoint(env, 'linux'), '/run/user/1000/agentidd/agentidd.sock');
    assert.strictEqual(endpoint({ HOME: '/home/u' }, 'linux'), '/home/u/.cache/agentidd/run/agentidd.sock');
    const cache = '/home/u/.cache/agentidd/run/agentidd.sock';
    assert.strictEqual(endpoint({ HOME: '/home/u', XDG_RUNTIME_DIR: 'rel' }, 'linux'), cache, 'relative: ignored');
    assert.strictEqual(endpoint({ HOME: '/home/u', XDG_CACHE_HOME: '/c' }, 'linux'), '/c/agentidd/run/agentidd.sock');
    assert.throws(() => endpoint({ XDG_CACHE_HOME: 'rel' }, 'linux'), /AGENTIDD_SOCKET/);
  });
  await t.test('darwin ignores XDG_RUNTIME_DIR', () => {
    const want = '/Users/u/Library/Application Support/agentidd/agentidd.sock';
    assert.strictEqual(endpoint({ HOME: '/Users/u' }, 'darwin'), want);
    assert.strictEqual(endpoint({ HOME: '/Users/u', XDG_RUNTIME_DIR: '/run/user/501' }, 'darwin'), want);
    assert.strictEqual(endpoint({ TMPDIR: '/var/folders/x/T/' }, 'darwin'), '/var/folders/x/T/agentidd/agentidd.sock');
  });
  await t.test('too long falls back to /tmp/agentidd-<uid>/<hash>.sock', () => {
    // sha256("")[:6]: darwin with no candidate hashes the empty string, as fitSocketPath does.
    assert.strictEqual(endpoint({}, 'darwin'), `/tmp/agentidd-${uid}/e3b0c44298fc.sock`);
    const home = '/' + 'x'.repeat(100);
    const got = endpoint({ HOME: home, TMPDIR: home }, 'darwin');
    assert.match(got, new RegExp(`^/tmp/agentidd-${uid}/[0-9a-f]{12}\\.sock$`));
    assert.strictEqual(got, endpoint({ HOME: home, TMPDIR: home }, 'darwin'), 'stable');
  });
  await t.test('windows needs AGENTIDD_SOCKET', () => {
    assert.throws(() => endpoint({ HOME: '/h' }, 'win32'), /AGENTIDD_SOCKET/);
  });
});

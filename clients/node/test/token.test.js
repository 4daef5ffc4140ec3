'use strict';
// Gets a token from the real daemon (run under `agentidd exec`, as the Go e2e tests do; `npm run test:daemon`) and
// prints one JSON line. The token goes to stdout only because that test verifies its signature and claims.
//   AGENTIDD_TEST_AGENT=test-agent AGENTIDD_TEST_SCOPE=api://files.contoso.example/.default node test/token.test.js
const { token } = require('..');

const agent = process.env.AGENTIDD_TEST_AGENT;
const scope = process.env.AGENTIDD_TEST_SCOPE;
if (!agent || !scope) {
  console.error('set AGENTIDD_TEST_AGENT and AGENTIDD_TEST_SCOPE');
  process.exit(2);
}
// AGENTIDD_TEST_CONSENT_WAIT=0 asks without waiting, to see the daemon's CONSENT_PENDING details.
const wait = process.env.AGENTIDD_TEST_CONSENT_WAIT === undefined ? 20 : Number(process.env.AGENTIDD_TEST_CONSENT_WAIT);
token(agent, [scope], { consentWaitSeconds: wait, justification: 'node client test' })
  .then((t) => {
    if (!t.accessToken || !(t.expiresAt > new Date())) throw new Error('empty or expired token');
    console.log(JSON.stringify({ mode: 'node', token: t.accessToken, agent: t.agentAppId, user: t.userOid }));
  })
  .catch((err) => {
    console.log(JSON.stringify({ mode: 'node', error: String(err.message), reason: err.reason || '',
      retryDelayMs: err.retryDelayMs || 0, metadata: (err.errorInfo && err.errorInfo.metadata) || {} }));
    process.exit(1);
  });

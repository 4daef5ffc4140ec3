'use strict';
// The unmodified @azure/identity ManagedIdentityCredential, as any Node agent would use it, inside `agentidd exec`.
//   node test/msi.js api://files.contoso.example/.default
const { ManagedIdentityCredential } = require('@azure/identity');

new ManagedIdentityCredential().getToken(process.argv[2])
  .then((t) => console.log(JSON.stringify({ mode: 'node-msi', token: t.token })))
  .catch((err) => {
    console.log(JSON.stringify({ mode: 'node-msi', error: String(err.message) }));
    process.exit(1);
  });

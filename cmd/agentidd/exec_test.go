package main

import (
	"slices"
	"testing"
)

// Inside agentidd exec the agent's identity is the only one an SDK may find: DefaultAzureCredential tries environment
// and workload-identity credentials before managed identity.
func TestChildEnvDropsOtherIdentities(t *testing.T) {
	in := []string{"PATH=/usr/bin", "AZURE_CLIENT_ID=dev", "AZURE_TENANT_ID=t", "AZURE_CLIENT_SECRET=s",
		"AZURE_FEDERATED_TOKEN_FILE=/var/run/token", "azure_password=p", "MSI_ENDPOINT=http://x", "IDENTITY_ENDPOINT=http://y",
		"AZURE_STORAGE_ACCOUNT=acct", "HOME=/home/a"}
	got := childEnv(in)
	want := []string{"PATH=/usr/bin", "AZURE_STORAGE_ACCOUNT=acct", "HOME=/home/a"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %v, want %v", got, want)
	}
}

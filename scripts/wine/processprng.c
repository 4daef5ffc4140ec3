/*
 * A stand-in bcryptprimitives.dll for wine 8, which lacks ProcessPrng.
 *
 * Go >= 1.22 windows binaries load bcryptprimitives.dll and call
 * ProcessPrng at startup for crypto/rand and the runtime's own seed; under
 * wine 8 the import fails and the binary dies before main. This DLL exports
 * only that function and fills the buffer from advapi32's RtlGenRandom
 * (SystemFunction036), which wine implements from the host's /dev/urandom.
 *
 * It is for running test binaries under wine only (scripts/wine-test); it
 * is never shipped. Build:
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll processprng.c \
 *     -Wl,--kill-at -ladvapi32
 */
#include <windows.h>

/* RtlGenRandom takes a ULONG length, so large requests are filled in
 * chunks rather than truncated. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
	while (cbData > 0) {
		ULONG n = cbData > 0x40000000 ? 0x40000000 : (ULONG)cbData;
		if (!SystemFunction036(pbData, n))
			return FALSE;
		pbData += n;
		cbData -= n;
	}
	return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
	(void)inst;
	(void)reason;
	(void)reserved;
	return TRUE;
}

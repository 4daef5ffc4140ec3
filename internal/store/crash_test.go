package store

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentidd/agentidd/platform"
)

// crashValue is what the child writes under key; its length varies so
// pages split, merge and get freed.
func crashValue(key string) []byte {
	n := 0
	for _, c := range key {
		n = n*31 + int(c)
	}
	return []byte("value-of-" + key + "-" + strings.Repeat("x", (n&0x7fff)%1500))
}

// crashChild writes records until it is killed, printing each key only
// after Update has returned: a printed key is an acknowledged write.
func crashChild() {
	dir := os.Getenv("STORE_CRASH_DIR")
	iter := os.Getenv("STORE_CRASH_ITER")
	s, err := Open(filepath.Join(dir, "state.db"), platform.NewFileSecretStore(filepath.Join(dir, "secrets")), Options{})
	if err != nil {
		fmt.Printf("ERR open: %v\n", err)
		os.Exit(3)
	}
	fmt.Println("OPEN")
	for j := 0; ; j++ {
		key := iter + "-" + strconv.Itoa(j)
		err := s.Update(func(tx *Tx) error {
			// Two buckets in one transaction: after any crash both or
			// neither must be there.
			if err := tx.Put("tokens", key, crashValue(key)); err != nil {
				return err
			}
			if err := tx.Put("grants", key, crashValue(key)); err != nil {
				return err
			}
			if err := tx.Put("audit", key, crashValue(key)); err != nil {
				return err
			}
			if j >= 3 {
				return tx.Delete("audit", iter+"-"+strconv.Itoa(j-3))
			}
			return nil
		})
		if err != nil {
			fmt.Printf("ERR update: %v\n", err)
			os.Exit(3)
		}
		fmt.Println("ACK " + key)
	}
}

// TestCrashSafety SIGKILLs a writer at random points and checks, after
// every kill, that the store opens clean and holds every acknowledged
// write. A kill loses no page cache, so this covers process crashes, not
// power loss (bbolt's fsync on commit is what covers that).
func TestCrashSafety(t *testing.T) {
	if os.Getenv("STORE_CRASH_CHILD") == "1" {
		crashChild()
		return
	}
	iterations := 200
	if testing.Short() {
		iterations = 40
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	secrets := platform.NewFileSecretStore(filepath.Join(dir, "secrets"))
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	acked := map[string]bool{}
	deadline := time.Now().Add(50 * time.Second)
	killsAfterOpen, ran := 0, 0

	for i := range iterations {
		ran++
		if time.Now().After(deadline) {
			ran--
			t.Logf("time budget reached after %d iterations", i)
			if i < 100 {
				t.Fatalf("only %d crash iterations fit in the budget", i)
			}
			break
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$", "-test.count=1")
		cmd.Env = append(os.Environ(), "STORE_CRASH_CHILD=1", "STORE_CRASH_DIR="+dir, "STORE_CRASH_ITER="+strconv.Itoa(i))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			// Only newline-terminated lines count: a fragment cut off by
			// the kill is not an acknowledgement.
			r := bufio.NewReader(stdout)
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					break
				}
				lines <- strings.TrimSuffix(l, "\n")
			}
			close(lines)
		}()

		// Mostly kill while writing; sometimes while the child is still
		// starting, opening or creating the key and file.
		var killAt <-chan time.Time
		early := rng.IntN(8) == 0
		if early {
			killAt = time.After(time.Duration(rng.IntN(40)) * time.Millisecond)
		}
		var errLine string
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				switch {
				case l == "OPEN" && !early:
					killAt = time.After(time.Duration(rng.IntN(25_000)) * time.Microsecond)
				case strings.HasPrefix(l, "ACK "):
					acked[strings.TrimPrefix(l, "ACK ")] = true
				case strings.HasPrefix(l, "ERR "):
					errLine = l
				}
			case <-killAt:
				if !early {
					killsAfterOpen++
				}
				_ = cmd.Process.Kill() // SIGKILL on Unix
				killAt = nil
			}
		}
		_ = cmd.Wait()
		if errLine != "" {
			t.Fatalf("iteration %d: child failed: %s", i, errLine)
		}

		s, err := Open(path, secrets, Options{})
		if err != nil {
			t.Fatalf("iteration %d: Open after kill: %v", i, err)
		}
		if files := corruptFiles(t, path); len(files) != 0 {
			t.Fatalf("iteration %d: store moved aside: %v", i, files)
		}
		for key := range acked {
			for _, b := range []string{"tokens", "grants"} {
				v, err := s.Get(b, key)
				if err != nil {
					t.Fatalf("iteration %d: acknowledged %s/%s: %v", i, b, key, err)
				}
				if !bytes.Equal(v, crashValue(key)) {
					t.Fatalf("iteration %d: acknowledged %s/%s has the wrong value", i, b, key)
				}
			}
		}
		// Atomicity: an unacknowledged last write is either whole or absent.
		grants := map[string]bool{}
		if err := s.ForEach("grants", func(k string, _ []byte) error { grants[k] = true; return nil }); err != nil {
			t.Fatalf("iteration %d: ForEach: %v", i, err)
		}
		err = s.ForEach("tokens", func(k string, v []byte) error {
			if !grants[k] {
				return fmt.Errorf("tokens/%s committed without grants/%s", k, k)
			}
			delete(grants, k)
			if !bytes.Equal(v, crashValue(k)) {
				return errors.New("tokens/" + k + " has the wrong value")
			}
			return nil
		})
		if err == nil && len(grants) != 0 {
			err = fmt.Errorf("%d grants without tokens", len(grants))
		}
		if err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if len(acked) == 0 || killsAfterOpen < ran/2 {
		t.Fatalf("the test exercised too little: %d acknowledged writes, %d kills while writing", len(acked), killsAfterOpen)
	}
	t.Logf("%d acknowledged writes survived %d kills", len(acked), ran)
}

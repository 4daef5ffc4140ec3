package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

const (
	defaultFlushInterval = 200 * time.Millisecond
	defaultBufferSize    = 64 << 10
	hashSep              = `,"hash":"`
	tailChunk            = 64 << 10
)

// genesis is prev on line 1.
var genesis = bytes.Repeat([]byte{'0'}, 64)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log closed")

// Options configure a Log.
type Options struct {
	Now           func() time.Time // default time.Now
	FlushInterval time.Duration    // default 200ms
	BufferSize    int              // default 64 KiB
	Log           *slog.Logger
}

// Log appends records to one file. Append is safe for concurrent use and
// does no I/O: records collect in memory and a background goroutine writes
// them every FlushInterval or as soon as BufferSize bytes are waiting, so a
// crash can lose the last ~200ms of records; the chain up to the last
// complete line stays verifiable. Should the writer fall far behind,
// Append writes itself (back-pressure) rather than grow without bound.
type Log struct {
	o    Options
	log  *slog.Logger
	f    *os.File
	path string

	mu      sync.Mutex
	cur     []byte   // encoded lines not yet handed to the writer
	spare   []byte   // the writer's last buffer, reused
	seq     uint64   // seq of the last appended line
	head    [64]byte // hex hash of the last appended line
	err     error    // sticky write error
	synced  bool     // everything written has been fsynced
	closed  bool
	dropped int64 // torn bytes removed at Open

	writeMu sync.Mutex // keeps buffers reaching the file in order
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

// Open opens or creates the log at path (mode 0600) and continues its
// chain. A torn last line, left by a crash mid-write, is truncated away and
// reported (Dropped, and a warning); a damaged complete last line is an
// error, because silently dropping it could hide tampering.
func Open(path string, o Options) (*Log, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = defaultFlushInterval
	}
	if o.BufferSize <= 0 {
		o.BufferSize = defaultBufferSize
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	l := &Log{o: o, log: o.Log.With("component", "audit"), f: f, path: path,
		stop: make(chan struct{}), done: make(chan struct{})}
	if err := l.recover(); err != nil {
		_ = f.Close()
		return nil, err
	}
	l.cur = make([]byte, 0, o.BufferSize+4096)
	l.spare = make([]byte, 0, o.BufferSize+4096)
	l.kick = make(chan struct{}, 1)
	go l.flushLoop()
	return l, nil
}

// recover enforces the file mode, drops a torn tail and loads the head.
func (l *Log) recover() error {
	// The file may predate us with a looser mode; the log names users and
	// agents, so it is private.
	if err := l.f.Chmod(0o600); err != nil {
		return fmt.Errorf("audit: chmod: %w", err)
	}
	fi, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: stat: %w", err)
	}
	lines, torn, err := readTail(l.f, fi.Size(), 1)
	if err != nil {
		return err
	}
	if torn > 0 {
		if err := l.f.Truncate(fi.Size() - torn); err != nil {
			return fmt.Errorf("audit: truncate torn tail: %w", err)
		}
		if err := l.f.Sync(); err != nil {
			return fmt.Errorf("audit: sync after truncate: %w", err)
		}
		l.dropped = torn
		l.log.Warn("audit log had a torn last line (crash mid-write); truncated it", "path", l.path, "bytes", torn)
	}
	copy(l.head[:], genesis)
	if len(lines) == 0 {
		return nil
	}
	seq, hash, _, err := checkLine(lines[0])
	if err != nil {
		return fmt.Errorf("audit: last line of %s is damaged (run `agentidd audit verify`): %w", l.path, err)
	}
	l.seq = seq
	copy(l.head[:], hash)
	return nil
}

// Dropped reports how many bytes of a torn last line Open removed.
func (l *Log) Dropped() int64 { return l.dropped }

// Append adds r and returns its id (the decimal seq). It sets Seq, Prev
// and Hash, and Time when zero.
func (l *Log) Append(r Record) (string, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return "", ErrClosed
	}
	if l.err != nil {
		l.mu.Unlock()
		return "", l.err
	}
	r.Seq = l.seq + 1
	if r.Time.IsZero() {
		r.Time = l.o.Now()
	}
	start := len(l.cur)
	b := appendRecord(l.cur, &r, l.head[:])
	sum := sha256.Sum256(b[start:])
	b = append(b, hashSep...)
	n := len(b)
	b = hex.AppendEncode(b, sum[:])
	b = append(b, '"', '}', '\n')
	l.cur = b
	l.seq = r.Seq
	copy(l.head[:], b[n:n+64])
	size := len(l.cur)
	l.mu.Unlock()

	switch {
	case size >= 8*l.o.BufferSize:
		if err := l.write(); err != nil {
			// The record is in the chain but may not be on disk.
			return "", err
		}
	case size >= l.o.BufferSize:
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	return strconv.FormatUint(r.Seq, 10), nil
}

// write hands the pending lines to the OS (no fsync).
func (l *Log) write() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	if l.err != nil {
		defer l.mu.Unlock()
		return l.err
	}
	buf := l.cur
	l.cur = l.spare[:0]
	l.mu.Unlock()
	if len(buf) == 0 {
		l.mu.Lock()
		l.spare = buf
		l.mu.Unlock()
		return nil
	}
	_, err := l.f.Write(buf)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spare = buf[:0]
	l.synced = false
	if err != nil {
		// The chain in memory has moved past what reached the file; the
		// log cannot continue without a gap, so stop accepting records.
		l.err = fmt.Errorf("audit: write: %w", err)
		return l.err
	}
	return nil
}

// Head returns the seq and hash of the last line, for anchoring in the
// encrypted store. An empty log returns 0 and 64 zeros.
func (l *Log) Head() (seq uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, string(l.head[:])
}

// Sync writes pending records and fsyncs the file.
func (l *Log) Sync() error {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return l.syncNow()
}

func (l *Log) syncNow() error {
	if err := l.write(); err != nil {
		return err
	}
	l.mu.Lock()
	l.synced = true // set before fsync: a write racing with it clears it again
	l.mu.Unlock()
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: fsync: %w", err)
	}
	return nil
}

func (l *Log) flushLoop() {
	defer close(l.done)
	t := time.NewTicker(l.o.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.kick:
			if err := l.write(); err != nil {
				l.log.Error("audit write failed", "err", err)
			}
			continue
		case <-t.C:
		}
		l.mu.Lock()
		idle := (len(l.cur) == 0 && l.synced) || l.err != nil
		l.mu.Unlock()
		if idle {
			continue
		}
		if err := l.syncNow(); err != nil {
			l.log.Error("audit flush failed", "err", err)
		}
	}
}

// Close writes pending records, fsyncs and closes the file. Further
// Appends fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	err := l.syncNow()
	return errors.Join(err, l.f.Close())
}

// LineError names the first line that fails verification (1-based).
type LineError struct {
	Line   int
	Reason string
}

func (e *LineError) Error() string { return fmt.Sprintf("audit: line %d: %s", e.Line, e.Reason) }

// checkLine checks one line's own hash and returns its seq, hash and prev.
func checkLine(line []byte) (seq uint64, hash, prev []byte, err error) {
	i := bytes.LastIndex(line, []byte(hashSep))
	if i < 0 || !bytes.HasSuffix(line, []byte(`"}`)) || len(line)-i-len(hashSep)-2 != 64 {
		return 0, nil, nil, errors.New("malformed line (no trailing hash)")
	}
	hash = line[i+len(hashSep) : len(line)-2]
	sum := sha256.Sum256(line[:i])
	var want [64]byte
	hex.Encode(want[:], sum[:])
	if !bytes.Equal(hash, want[:]) {
		return 0, nil, nil, errors.New("hash does not match the line's content (line edited)")
	}
	var r struct {
		Seq  uint64 `json:"seq"`
		Prev string `json:"prev"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return 0, nil, nil, fmt.Errorf("not valid JSON: %w", err)
	}
	return r.Seq, hash, []byte(r.Prev), nil
}

// Verify walks the whole chain and returns the number of good lines. The
// error, a *LineError, names the first bad line: edited, reordered,
// removed (the next line's prev no longer matches) or torn.
func Verify(path string) (int, error) {
	return verify(path, 0, "")
}

// VerifyAnchor is Verify plus a check that line anchorSeq still has the
// hash recorded earlier by Log.Head, which catches a log rewritten from
// scratch or truncated below the anchor.
func VerifyAnchor(path string, anchorSeq uint64, anchorHash string) (int, error) {
	if anchorSeq == 0 {
		return Verify(path)
	}
	return verify(path, anchorSeq, anchorHash)
}

func verify(path string, anchorSeq uint64, anchorHash string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	prev := slices.Clone(genesis)
	n := 0
	anchored := false
	for {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 && errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return n, fmt.Errorf("audit: read: %w", err)
		}
		lineNo := n + 1
		if line[len(line)-1] != '\n' {
			return n, &LineError{Line: lineNo, Reason: "incomplete last line (torn write)"}
		}
		seq, hash, p, cerr := checkLine(line[:len(line)-1])
		switch {
		case cerr != nil:
			return n, &LineError{Line: lineNo, Reason: cerr.Error()}
		case seq != uint64(lineNo):
			return n, &LineError{Line: lineNo, Reason: fmt.Sprintf("seq %d, want %d (lines removed or reordered)", seq, lineNo)}
		case !bytes.Equal(p, prev):
			return n, &LineError{Line: lineNo, Reason: "prev does not match the previous line's hash (chain broken)"}
		}
		if anchorSeq == seq {
			if string(hash) != anchorHash {
				return n, &LineError{Line: lineNo, Reason: "hash differs from the anchored head (log rewritten)"}
			}
			anchored = true
		}
		prev = append(prev[:0], hash...)
		n++
	}
	if anchorSeq != 0 && !anchored {
		return n, &LineError{Line: n + 1, Reason: fmt.Sprintf("log ends before the anchored line %d (truncated)", anchorSeq)}
	}
	return n, nil
}

// Tail returns the last n complete records, oldest first. It does not
// verify the chain (see Verify).
func Tail(path string, n int) ([]Record, error) {
	if n <= 0 {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: stat: %w", err)
	}
	lines, _, err := readTail(f, fi.Size(), n)
	if err != nil {
		return nil, err
	}
	out := make([]Record, 0, len(lines))
	for _, line := range lines {
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			return out, fmt.Errorf("audit: decode record: %w", err)
		}
		out = append(out, r)
	}
	return out, nil
}

// readTail reads backwards from size and returns up to n complete lines
// (without newlines, oldest first) and the length of an unterminated tail.
func readTail(f *os.File, size int64, n int) ([][]byte, int64, error) {
	var buf []byte // f[off:size]
	off := size
	for off > 0 {
		// Enough when buf holds n+1 newlines: the n lines after the first
		// newline are complete even if the segment before it is not.
		if bytes.Count(buf, []byte{'\n'}) > n {
			break
		}
		step := min(int64(tailChunk), off)
		off -= step
		chunk := make([]byte, step, int(step)+len(buf))
		if _, err := f.ReadAt(chunk, off); err != nil {
			return nil, 0, fmt.Errorf("audit: read tail: %w", err)
		}
		buf = append(chunk, buf...)
	}
	last := bytes.LastIndexByte(buf, '\n')
	torn := int64(len(buf) - last - 1)
	if last < 0 {
		return nil, torn, nil
	}
	body := buf[:last]
	var lines [][]byte
	for len(lines) < n {
		i := bytes.LastIndexByte(body, '\n')
		if i < 0 {
			if off == 0 && len(body) > 0 {
				lines = append(lines, body)
			}
			break
		}
		lines = append(lines, body[i+1:])
		body = body[:i]
	}
	for i, j := 0, len(lines)-1; i < j; i, j = i+1, j-1 {
		lines[i], lines[j] = lines[j], lines[i]
	}
	return lines, torn, nil
}

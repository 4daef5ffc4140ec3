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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentidd/agentidd/internal/fsutil"
)

const (
	defaultFlushInterval = 200 * time.Millisecond
	defaultBufferSize    = 64 << 10
	defaultMaxSize       = 64 << 20
	defaultKeep          = 8
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
	// MaxSize rotates the file before it grows past this many bytes: it becomes <path>.1 (older files shift to .2, .3,
	// …) and a new file continues the same chain. Default 64 MiB.
	MaxSize int64
	// Keep is how many rotated files are kept; older ones are deleted. Default 8.
	Keep int
	Log  *slog.Logger
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
	size int64 // bytes in f; the writer's, under writeMu
	// wseq and whead name the last line handed to f, under writeMu: what SyncedHead may anchor once f is fsynced.
	wseq  uint64
	whead [64]byte

	mu      sync.Mutex
	cur     []byte   // encoded lines not yet handed to the writer
	spare   []byte   // the writer's last buffer, reused
	seq     uint64   // seq of the last appended line
	head    [64]byte // hex hash of the last appended line
	err     error    // sticky write or fsync error
	onFail  func(error)
	synced  bool // everything written has been fsynced
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
	if o.MaxSize <= 0 {
		o.MaxSize = defaultMaxSize
	}
	if o.Keep <= 0 {
		o.Keep = defaultKeep
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
	l.size = fi.Size() - torn
	copy(l.head[:], genesis)
	l.whead = l.head
	from := l.path
	if len(lines) == 0 {
		// A new file after a rotation (or a crash right after one) continues the chain of the file rotated away.
		nums, err := rotated(l.path)
		if err != nil || len(nums) == 0 {
			return err
		}
		from = segmentPath(l.path, nums[0])
		if lines, err = tailOf(from, 1); err != nil || len(lines) == 0 {
			return err
		}
	}
	seq, hash, _, err := checkLine(lines[0])
	if err != nil {
		return fmt.Errorf("audit: last line of %s is damaged (run `agentidd audit verify`): %w", from, err)
	}
	l.seq = seq
	copy(l.head[:], hash)
	l.wseq, l.whead = l.seq, l.head
	return nil
}

// segmentPath names rotated file i (1 = the newest rotated); 0 is the live file.
func segmentPath(path string, i int) string {
	if i == 0 {
		return path
	}
	return path + "." + strconv.Itoa(i)
}

// rotated returns the numbers of the rotated files present, newest (lowest) first. It lists the directory rather than
// counting up from 1 because a rotation cut short leaves a hole in the numbering, and the files past the hole are
// still part of the chain.
func rotated(path string) ([]int, error) {
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("audit: list rotated files: %w", err)
	}
	prefix := filepath.Base(path) + "."
	var nums []int
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || e.IsDir() {
			continue
		}
		// Only the exact names rotation writes: audit.jsonl.01 or .+1 would otherwise alias .1.
		if n, err := strconv.Atoi(s); err == nil && n >= 1 && strconv.Itoa(n) == s {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	return nums, nil
}

// renameFile is os.Rename; tests replace it to refuse the way Windows does while a reader holds the file open.
var renameFile = os.Rename

// syncFile is (*os.File).Sync; tests replace it to fail the way a disk does.
var syncFile = (*os.File).Sync

// OnFailure has fn called once, with the error, when the log stops accepting records because a write or an fsync
// failed (now, if it already has). The caller uses it to stop issuing tokens: Append returns the error from then on,
// but a token whose record cannot be kept must not be issued at all, and that is the caller's decision. fn runs on
// the goroutine that hit the error and must not call back into the Log.
func (l *Log) OnFailure(fn func(error)) {
	l.mu.Lock()
	err := l.err
	if err == nil {
		l.onFail = fn
	}
	l.mu.Unlock()
	if err != nil {
		fn(err)
	}
}

// failLocked makes err sticky and returns the callback to run once mu is released.
func (l *Log) failLocked(err error) func() {
	if l.err != nil {
		return func() {}
	}
	l.err = err
	fn := l.onFail
	l.onFail = nil
	if fn == nil {
		return func() {}
	}
	return func() { fn(err) }
}

// tailOf returns the last n complete lines of a file; none if it does not exist.
func tailOf(path string, n int) ([][]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: stat: %w", err)
	}
	lines, _, err := readTail(f, fi.Size(), n)
	return lines, err
}

// rotate moves the live file to <path>.1 (shifting older ones up, deleting what is beyond Keep) and continues in a new
// file. It runs under writeMu. The live file is closed first, because Windows cannot rename an open file; then
// whichever file is at path is reopened: the new one, or the old one if a rename failed, so the chain goes on and no
// record is lost either way. Only a failed fsync is returned: the file's last records may not be on disk (syncNow).
func (l *Log) rotate() error {
	if err := syncFile(l.f); err != nil {
		return fmt.Errorf("audit: fsync before rotation: %w", err)
	}
	_ = l.f.Close()
	if err := l.shiftFiles(); err != nil {
		l.log.Warn("audit rotation skipped; the live file keeps growing", "err", err)
	}
	fsutil.SyncDir(filepath.Dir(l.path))
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
	}
	if err != nil {
		// l.f stays the closed file: the next write fails and the error sticks, as for any write error.
		l.log.Error("audit log could not be reopened after rotation", "err", err)
		return nil
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// shiftFiles renames the live file to .1 after moving each rotated file in its way one number up, newest last, so that
// whatever point it stops at leaves the files in age order. Only the run .1, .2, … up to the first hole has to move: a
// hole left by a rotation cut short takes the shift, so a retry while the live file cannot be renamed deletes nothing
// (deleting the oldest file on every retry would empty the history within a few flushes). Without a hole up to Keep,
// the files from .Keep up are deleted first: the oldest, and any left from a larger Keep, which no longer chain onto
// the files shifted below them.
func (l *Log) shiftFiles() error {
	nums, err := rotated(l.path)
	if err != nil {
		return err
	}
	hole := 1
	for _, n := range nums {
		if n != hole {
			break
		}
		hole++
	}
	if hole > l.o.Keep {
		for _, n := range nums {
			if n < l.o.Keep {
				continue
			}
			if err := os.Remove(segmentPath(l.path, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		hole = l.o.Keep
	}
	for i := hole - 1; i >= 0; i-- {
		if err := renameFile(segmentPath(l.path, i), segmentPath(l.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
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
	return l.writeLocked()
}

// writeLocked is write under writeMu, which also guards f and size.
func (l *Log) writeLocked() error {
	l.mu.Lock()
	if l.err != nil {
		defer l.mu.Unlock()
		return l.err
	}
	buf := l.cur
	// Append moves cur and the head together under mu, so this head is buf's last line.
	seq, head := l.seq, l.head
	l.cur = l.spare[:0]
	l.mu.Unlock()
	if len(buf) == 0 {
		l.mu.Lock()
		l.spare = buf
		l.mu.Unlock()
		return nil
	}
	var err error
	if l.size > 0 && l.size+int64(len(buf)) > l.o.MaxSize {
		err = l.rotate()
	}
	if err == nil {
		n, werr := l.f.Write(buf)
		l.size += int64(n)
		if werr != nil {
			err = fmt.Errorf("audit: write: %w", werr)
		}
	}
	l.mu.Lock()
	l.spare = buf[:0]
	l.synced = false
	if err != nil {
		// The chain in memory has moved past what reached the file; the
		// log cannot continue without a gap, so stop accepting records.
		notify := l.failLocked(err)
		err = l.err
		l.mu.Unlock()
		notify()
		return err
	}
	l.wseq, l.whead = seq, head
	l.mu.Unlock()
	return nil
}

// Head returns the seq and hash of the last appended line, which may still
// be only in memory; anchor SyncedHead instead. An empty log returns 0 and
// 64 zeros.
func (l *Log) Head() (seq uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, string(l.head[:])
}

// Sync writes pending records and fsyncs the file.
func (l *Log) Sync() error {
	_, _, err := l.SyncedHead()
	return err
}

// SyncedHead writes pending records, fsyncs the file and returns the seq
// and hash of the last line that fsync covered, for anchoring in the
// encrypted store. Head can be ahead of it: a record appended after the
// write is only in memory, and an anchor naming it would make the log look
// truncated after a crash, then rewritten once its seq is reused. An empty
// log returns 0 and 64 zeros.
func (l *Log) SyncedHead() (seq uint64, hash string, err error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return 0, "", ErrClosed
	}
	return l.syncNow()
}

func (l *Log) syncNow() (uint64, string, error) {
	// The fsync runs outside writeMu: Appends that fall back to writing themselves must not wait for the disk.
	l.writeMu.Lock()
	err := l.writeLocked()
	f, seq, head := l.f, l.wseq, l.whead
	if err == nil {
		l.mu.Lock()
		l.synced = true // set before fsync: a write racing with it clears it again
		l.mu.Unlock()
	}
	l.writeMu.Unlock()
	if err != nil {
		return 0, "", err
	}
	// A rotation may have closed f meanwhile; it fsynced f first, and seq is in f either way.
	if err := syncFile(f); err != nil && !errors.Is(err, os.ErrClosed) {
		// Sticky like a write error: after a failed fsync the kernel may have dropped the unwritten pages and cleared
		// the error, so a later fsync can succeed over records that never reached the disk.
		l.mu.Lock()
		notify := l.failLocked(fmt.Errorf("audit: fsync: %w", err))
		err = l.err
		l.mu.Unlock()
		notify()
		return 0, "", err
	}
	return seq, string(head[:]), nil
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
		if _, _, err := l.syncNow(); err != nil {
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
	_, _, err := l.syncNow()
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	return errors.Join(err, l.f.Close())
}

// LineError names the first line that fails verification: the file (the live log or a rotated one) and the line in it
// (1-based).
type LineError struct {
	File   string
	Line   int
	Reason string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("audit: %s line %d: %s", e.File, e.Line, e.Reason)
}

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

// Verify walks the whole chain, through the rotated files still kept (oldest first) and the live file, and returns the
// number of good lines. The error, a *LineError, names the first bad line: edited, reordered, removed (the next line's
// prev no longer matches) or torn. Without rotated files the chain must start at seq 1; with them, the oldest kept file
// starts wherever rotation left it, because what came before was deleted by retention.
func Verify(path string) (int, error) {
	return verify(path, 0, "")
}

// VerifyAnchor is Verify plus a check that line anchorSeq still has the
// hash recorded earlier by Log.SyncedHead, which catches a log rewritten
// from scratch or truncated below the anchor.
func VerifyAnchor(path string, anchorSeq uint64, anchorHash string) (int, error) {
	if anchorSeq == 0 {
		return Verify(path)
	}
	return verify(path, anchorSeq, anchorHash)
}

// segments lists the log's files oldest first: the rotated ones still kept, then the live file. A hole in the numbering
// is skipped, not taken as the end: the chain decides whether anything is missing, since a file removed from the middle
// breaks it where the files on either side meet.
func segments(path string) ([]string, error) {
	nums, err := rotated(path)
	if err != nil {
		return nil, err
	}
	files := make([]string, 0, len(nums)+1)
	for _, n := range slices.Backward(nums) {
		files = append(files, segmentPath(path, n))
	}
	return append(files, path), nil
}

// chainWalk carries the chain from one file into the next.
type chainWalk struct {
	prev       []byte
	nextSeq    uint64 // 0 until the first line fixes it
	anchorSeq  uint64
	anchorHash string
	anchored   bool
	n          int
}

func verify(path string, anchorSeq uint64, anchorHash string) (int, error) {
	files, err := segments(path)
	if err != nil {
		return 0, err
	}
	w := chainWalk{prev: slices.Clone(genesis), anchorSeq: anchorSeq, anchorHash: anchorHash}
	if len(files) == 1 {
		w.nextSeq = 1
	}
	for _, file := range files {
		if err := w.file(file); err != nil {
			return w.n, err
		}
	}
	if anchorSeq != 0 && !w.anchored {
		return w.n, &LineError{File: path, Line: w.n + 1, Reason: fmt.Sprintf("log ends before the anchored line %d (truncated)", anchorSeq)}
	}
	return w.n, nil
}

func (w *chainWalk) file(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("audit: read: %w", err)
		}
		if line[len(line)-1] != '\n' {
			return &LineError{File: path, Line: lineNo, Reason: "incomplete last line (torn write)"}
		}
		seq, hash, p, cerr := checkLine(line[:len(line)-1])
		switch {
		case cerr != nil:
			return &LineError{File: path, Line: lineNo, Reason: cerr.Error()}
		case w.nextSeq != 0 && seq != w.nextSeq:
			return &LineError{File: path, Line: lineNo, Reason: fmt.Sprintf("seq %d, want %d (lines removed or reordered)", seq, w.nextSeq)}
		case w.nextSeq != 0 && !bytes.Equal(p, w.prev):
			return &LineError{File: path, Line: lineNo, Reason: "prev does not match the previous line's hash (chain broken)"}
		}
		if w.anchorSeq == seq {
			if string(hash) != w.anchorHash {
				return &LineError{File: path, Line: lineNo, Reason: "hash differs from the anchored head (log rewritten)"}
			}
			w.anchored = true
		}
		w.prev = append(w.prev[:0], hash...)
		w.nextSeq = seq + 1
		w.n++
	}
}

// Tail returns the last n complete lines, oldest first, as they are on disk. It neither decodes nor verifies them (see
// Verify): a damaged line is still shown, not a reason to show nothing.
func Tail(path string, n int) ([][]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	lines, err := tailOf(path, n)
	if err != nil {
		return nil, err
	}
	if len(lines) < n {
		// Right after a rotation the live file is short; the rest is in the newest rotated file.
		if nums, err := rotated(path); err == nil && len(nums) > 0 {
			if older, err := tailOf(segmentPath(path, nums[0]), n-len(lines)); err == nil {
				lines = append(older, lines...)
			}
		}
	}
	return lines, nil
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

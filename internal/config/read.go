package config

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// maxFileSize bounds what is read of a config or policy file. Either is a few
// KiB; the bound keeps a mistaken path (a log, /dev/zero) from filling memory.
const maxFileSize = 1 << 20

// Key depth and nesting bounds, far above what any setting needs (the deepest
// key is agent.binding.sha256): the decoder's work grows with the square of
// a key's depth, so a small file of nested inline tables or a long dotted key
// would otherwise hold the daemon's start or reload for minutes.
const (
	maxKeyDepth = 16
	maxNesting  = 64 // open arrays and inline tables
)

// readFile reads a config or policy file. Only a regular file (a symlink to
// one is fine) is read: a FIFO would block until something writes to it.
func readFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Checked again on what was opened: the path may have been replaced since
	// the Stat.
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, errTooBig(path)
	}
	return data, nil
}

func errTooBig(path string) error {
	return fmt.Errorf("%s is larger than %d KiB; it cannot be a config or policy file", path, maxFileSize>>10)
}

var errTooDeep = errors.New("nested deeper than any setting")

// checkShape refuses text whose keys go deeper than maxKeyDepth or whose
// arrays and inline tables nest deeper than maxNesting, naming the line. It
// follows just enough of TOML (strings, comments, table headers, inline
// tables, arrays) to know each key's depth; anything it does not understand it
// leaves to the decoder, which reports it.
func checkShape(data []byte) error {
	type frame struct {
		table bool // '{' (else '[')
		base  int  // depth of the key the frame is the value of
	}
	var (
		stack     []frame
		line      = 1
		rootBase  = 0    // depth of the current [table] header
		inKey     = true // reading a key (else a value)
		inHeader  = false
		segs      = 1 // segments of the key (or header) being read
		valueBase = 0
	)
	tooDeep := func(what string) error {
		return fmt.Errorf("line %d: %s %w", line, what, errTooDeep)
	}
	base := func() int {
		if len(stack) == 0 {
			return rootBase
		}
		return stack[len(stack)-1].base
	}
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '\n':
			line++
			if len(stack) == 0 {
				inKey, inHeader, segs = true, false, 1
			}
		case '#':
			for i+1 < len(data) && data[i+1] != '\n' {
				i++
			}
		case '"', '\'':
			i, line = skipString(data, i, line)
		case '.':
			if inKey || inHeader {
				segs++
				if d := base() + segs; inHeader && segs > maxKeyDepth || inKey && d > maxKeyDepth {
					return tooDeep("key is")
				}
			}
		case '=':
			if inKey {
				inKey, valueBase = false, base()+segs
			}
		case '[':
			switch {
			case inKey && len(stack) == 0 && !inHeader:
				inKey, inHeader, segs = false, true, 1
				if i+1 < len(data) && data[i+1] == '[' {
					i++
				}
			case !inKey && !inHeader:
				if stack = append(stack, frame{false, valueBase}); len(stack) > maxNesting {
					return tooDeep("value is")
				}
			}
		case ']':
			if inHeader {
				inHeader, rootBase = false, segs
				if i+1 < len(data) && data[i+1] == ']' {
					i++
				}
			} else if len(stack) > 0 && !stack[len(stack)-1].table {
				stack = stack[:len(stack)-1]
			}
		case '{':
			if !inKey && !inHeader {
				if stack = append(stack, frame{true, valueBase}); len(stack) > maxNesting {
					return tooDeep("value is")
				}
				inKey, segs = true, 1
			}
		case '}':
			if len(stack) > 0 && stack[len(stack)-1].table {
				stack = stack[:len(stack)-1]
				inKey = false
			}
		case ',':
			if len(stack) > 0 {
				if top := stack[len(stack)-1]; top.table {
					inKey, segs = true, 1
				} else {
					inKey, valueBase = false, top.base
				}
			}
		}
	}
	return nil
}

// skipString returns the index of the last byte of the string (basic,
// literal, or either multi-line kind) that starts at data[i], and the line it
// ends on. An unterminated string ends at the end of its line (or of the
// data): the decoder reports it.
func skipString(data []byte, i, line int) (int, int) {
	q := data[i]
	multi := i+2 < len(data) && data[i+1] == q && data[i+2] == q
	if multi {
		i += 2
	}
	for i++; i < len(data); i++ {
		switch c := data[i]; {
		case c == '\\' && q == '"':
			if i+1 < len(data) && data[i+1] == '\n' {
				line++
			}
			i++
		case c == '\n':
			if !multi {
				return i - 1, line
			}
			line++
		case c == q && !multi:
			return i, line
		case c == q && i+2 < len(data) && data[i+1] == q && data[i+2] == q:
			i += 2
			// Up to two more quotes belong to the content before the closing three.
			for n := 0; n < 2 && i+1 < len(data) && data[i+1] == q; n++ {
				i++
			}
			return i, line
		}
	}
	return len(data) - 1, line
}

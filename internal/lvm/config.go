package lvm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// This file parses LVM's configuration syntax, the one of lvm.conf and of VG
// metadata (libdm/libdm-config.c):
//
//	file    = node*
//	node    = key ( "{" node* "}" | "=" value )
//	value   = "[" ( scalar ","? )* "]" | scalar
//	scalar  = integer | float | "double-quoted" | 'single-quoted' | bare-word
//
// with # comments to the end of the line, a key either a bare identifier or a
// quoted string (a key a/b/c makes nested sections), and the text ending at
// its end or at the first NUL byte. Double-quoted strings unescape \" and \\.
//
// It follows lvm2's tokenizer, quirks included (an integer with a leading 0
// is octal; after "=", "[" or "," a bare word runs to the next space, #, =,
// { or }), with a few deliberate refusals where lvm2 would read garbage: an
// unterminated string, nesting deeper than maxConfigDepth.

// ValueKind is the type of a configuration value.
type ValueKind uint8

const (
	KindInt ValueKind = iota + 1
	KindFloat
	KindString
	KindEmptyArray // the only value of "key = []"
)

func (k ValueKind) String() string {
	switch k {
	case KindInt:
		return "integer"
	case KindFloat:
		return "float"
	case KindString:
		return "string"
	case KindEmptyArray:
		return "empty array"
	}
	return "invalid"
}

// Value is one configuration value.
type Value struct {
	Kind  ValueKind
	Int   int64
	Float float64
	Str   string
}

func (v Value) String() string {
	switch v.Kind {
	case KindInt:
		return strconv.FormatInt(v.Int, 10)
	case KindFloat:
		return strconv.FormatFloat(v.Float, 'g', -1, 64)
	case KindString:
		return strconv.Quote(v.Str)
	case KindEmptyArray:
		return "[]"
	}
	return "?"
}

// ConfigNode is a section (Values == nil) or a key with its values: one for a
// scalar, one or more for an array (an empty array is one KindEmptyArray
// value). Children keep the order of the text; keys may repeat.
type ConfigNode struct {
	Key      string
	Values   []Value
	IsArray  bool
	Children []*ConfigNode
	Line     int
}

// IsSection reports whether the node is a section.
func (n *ConfigNode) IsSection() bool { return n.Values == nil }

// Find returns the first child with the key, as lvm2 looks keys up, or nil.
func (n *ConfigNode) Find(key string) *ConfigNode {
	if n == nil {
		return nil
	}
	for _, c := range n.Children {
		if c.Key == key {
			return c
		}
	}
	return nil
}

// Section returns the first child with the key if it is a section.
func (n *ConfigNode) Section(key string) (*ConfigNode, bool) {
	c := n.Find(key)
	if c == nil || !c.IsSection() {
		return nil, false
	}
	return c, true
}

// Str returns the key's string; like lvm2 it takes the first value, so an
// array whose first element is a string also answers.
func (n *ConfigNode) Str(key string) (string, bool) {
	c := n.Find(key)
	if c == nil || c.IsSection() || c.Values[0].Kind != KindString {
		return "", false
	}
	return c.Values[0].Str, true
}

// Int returns the key's integer (first value, as lvm2).
func (n *ConfigNode) Int(key string) (int64, bool) {
	c := n.Find(key)
	if c == nil || c.IsSection() || c.Values[0].Kind != KindInt {
		return 0, false
	}
	return c.Values[0].Int, true
}

// List returns the key's values: a scalar is a list of one, as in lvm2.
func (n *ConfigNode) List(key string) ([]Value, bool) {
	c := n.Find(key)
	if c == nil || c.IsSection() {
		return nil, false
	}
	return c.Values, true
}

// maxConfigDepth bounds section nesting (VG metadata nests four deep).
const maxConfigDepth = 64

// ConfigError is a syntax error in configuration text.
type ConfigError struct {
	Line int
	Byte int // 1-based offset in the text
	Msg  string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("parse error at byte %d (line %d): %s", e.Byte, e.Line, e.Msg)
}

type tokKind uint8

const (
	tokEOF tokKind = iota
	tokSectionB
	tokSectionE
	tokArrayB
	tokArrayE
	tokComma
	tokEq
	tokInt
	tokFloat
	tokString        // '...'
	tokStringEscaped // "..."
	tokStringBare    // a bare word where a value is expected
	tokIdentifier
)

func (t tokKind) String() string {
	return [...]string{"end of text", "'{'", "'}'", "'['", "']'", "','", "'='", "integer",
		"float", "string", "string", "word", "identifier"}[t]
}

type configParser struct {
	text   []byte
	tb, te int // current token [tb, te)
	t      tokKind
	line   int
	key    string // key whose value is being read (for the creation_time quirk)
	depth  int
}

// ParseConfig parses configuration text into a root section whose Children
// are the top-level nodes.
func ParseConfig(text []byte) (*ConfigNode, error) {
	// The text ends at its first NUL, as in lvm2 (metadata texts carry one).
	for i, c := range text {
		if c == 0 {
			text = text[:i]
			break
		}
	}
	p := &configParser{text: text, line: 1}
	root := &ConfigNode{Key: "<root>"}
	p.next(tokSectionE)
	for p.t != tokEOF {
		if err := p.node(root); err != nil {
			return nil, err
		}
	}
	return root, nil
}

func (p *configParser) errorf(format string, a ...any) error {
	return &ConfigError{Line: p.line, Byte: p.tb + 1, Msg: fmt.Sprintf(format, a...)}
}

func (p *configParser) match(t tokKind) error {
	if p.t != t {
		return p.errorf("expected %v, found %v", t, p.t)
	}
	p.next(t)
	return nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// next reads the next token; prev is the token just matched, which decides
// whether a word is a value or an identifier.
func (p *configParser) next(prev tokKind) {
	valuesAllowed := prev == tokEq || prev == tokArrayB || prev == tokComma
	p.tb = p.te
	p.skipSpace()
	n := len(p.text)
	if p.tb >= n {
		p.t = tokEOF
		return
	}
	c := p.text[p.tb]
	te := p.tb + 1
	switch c {
	case '{':
		p.t = tokSectionB
	case '}':
		p.t = tokSectionE
	case '[':
		p.t = tokArrayB
	case ']':
		p.t = tokArrayE
	case ',':
		p.t = tokComma
	case '=':
		p.t = tokEq
	case '"':
		p.t = tokStringEscaped
		for te < n && p.text[te] != '"' {
			if p.text[te] == '\\' && te+1 < n {
				te++
			}
			te++
		}
		if te < n {
			te++ // the closing quote
		}
	case '\'':
		p.t = tokString
		for te < n && p.text[te] != '\'' {
			te++
		}
		if te < n {
			te++
		}
	default:
		if valuesAllowed && (c == '.' || c == '+' || c == '-' || isDigit(c)) {
			p.t = tokInt
			if c == '.' {
				p.t = tokFloat
			}
			for ; te < n; te++ {
				if isDigit(p.text[te]) {
					continue
				}
				if p.text[te] == '.' && p.t != tokFloat {
					p.t = tokFloat
					continue
				}
				break
			}
			break
		}
		p.t = tokIdentifier
		for te < n {
			c := p.text[te]
			if isSpace(c) || c == '#' || c == '=' || c == '{' || c == '}' {
				break
			}
			te++
		}
		if valuesAllowed {
			p.t = tokStringBare
		}
	}
	p.te = te
}

func (p *configParser) skipSpace() {
	n := len(p.text)
	for p.te < n {
		c := p.text[p.te]
		if c == '#' {
			for p.te < n && p.text[p.te] != '\n' {
				p.te++
			}
			continue
		}
		if !isSpace(c) {
			break
		}
		if c == '\n' {
			p.line++
		}
		p.te++
	}
	p.tb = p.te
}

// quoted returns the inside of a quoted token, refusing one left open.
func (p *configParser) quoted() (string, error) {
	tok := p.text[p.tb:p.te]
	if len(tok) < 2 || tok[len(tok)-1] != tok[0] || (tok[0] == '"' && escapedQuote(tok)) {
		return "", p.errorf("unterminated string")
	}
	s := string(tok[1 : len(tok)-1])
	if tok[0] == '"' {
		s = unescapeDoubleQuotes(s)
	}
	return s, nil
}

// escapedQuote reports whether the final quote of a "..." token is escaped,
// which means the string never closed.
func escapedQuote(tok []byte) bool {
	bs := 0
	for i := len(tok) - 2; i > 0 && tok[i] == '\\'; i-- {
		bs++
	}
	return bs%2 == 1
}

// unescapeDoubleQuotes undoes lvm2's escaping in "..." strings: \" and \\.
// Any other backslash stays.
func unescapeDoubleQuotes(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (p *configParser) node(parent *ConfigNode) error {
	line := p.line
	var key string
	switch p.t {
	case tokStringEscaped, tokString:
		s, err := p.quoted()
		if err != nil {
			return err
		}
		key = s
		p.next(p.t)
	case tokIdentifier:
		key = string(p.text[p.tb:p.te])
		p.next(tokIdentifier)
	default:
		return p.errorf("expected a key, found %v", p.t)
	}
	if key == "" {
		return p.errorf("empty section identifier")
	}
	n := makePath(parent, key, line)
	if p.t == tokSectionB {
		if p.depth >= maxConfigDepth {
			return p.errorf("sections nested deeper than %d", maxConfigDepth)
		}
		p.depth++
		p.next(tokSectionB)
		for p.t != tokSectionE {
			if p.t == tokEOF {
				return p.errorf("section %q not closed", truncate(key))
			}
			if err := p.node(n); err != nil {
				return err
			}
		}
		p.depth--
		p.next(tokSectionE)
		return nil
	}
	if err := p.match(tokEq); err != nil {
		return err
	}
	p.key = n.Key
	vals, isArray, err := p.value()
	if err != nil {
		return err
	}
	n.Values, n.IsArray = vals, isArray
	return nil
}

// makePath appends a node for key under parent; a key a/b/c makes the
// sections a and b on the way, as lvm2 does (each one new: lvm2 reads VG
// metadata without merging duplicate keys).
func makePath(parent *ConfigNode, key string, line int) *ConfigNode {
	if !strings.Contains(key, "/") {
		n := &ConfigNode{Key: key, Line: line}
		parent.Children = append(parent.Children, n)
		return n
	}
	parts := strings.Split(key, "/")
	var kept []string
	for _, s := range parts {
		if s != "" {
			kept = append(kept, s)
		}
	}
	if len(kept) == 0 {
		kept = []string{""}
	}
	for _, k := range kept {
		n := &ConfigNode{Key: k, Line: line}
		parent.Children = append(parent.Children, n)
		parent = n
	}
	return parent
}

func (p *configParser) value() ([]Value, bool, error) {
	if p.t != tokArrayB {
		v, err := p.scalar()
		if err != nil {
			return nil, false, err
		}
		return []Value{v}, false, nil
	}
	p.next(tokArrayB)
	var vals []Value
	for p.t != tokArrayE {
		v, err := p.scalar()
		if err != nil {
			return nil, false, err
		}
		vals = append(vals, v)
		if p.t == tokComma {
			p.next(tokComma)
		}
	}
	p.next(tokArrayE)
	if len(vals) == 0 {
		vals = []Value{{Kind: KindEmptyArray}}
	}
	return vals, true, nil
}

// creationTimeFallback is what lvm2 substitutes for a creation_time integer
// that does not fit (written by old 32-bit builds).
const creationTimeFallback = 1527120000

func (p *configParser) scalar() (Value, error) {
	tok := string(p.text[p.tb:p.te])
	var v Value
	switch p.t {
	case tokInt:
		// strtoll(..., 0): a leading 0 means octal, as in lvm2.
		i, err := strconv.ParseInt(tok, 0, 64)
		if err != nil {
			var ne *strconv.NumError
			if errors.As(err, &ne) && ne.Err == strconv.ErrRange && p.key == "creation_time" {
				i = creationTimeFallback
			} else {
				return v, p.errorf("bad integer %q", truncate(tok))
			}
		}
		v = Value{Kind: KindInt, Int: i}
	case tokFloat:
		f, err := strconv.ParseFloat(tok, 64)
		if err != nil {
			var ne *strconv.NumError
			if errors.As(err, &ne) && ne.Err == strconv.ErrRange {
				return v, p.errorf("float %q out of range", truncate(tok))
			}
			f = 0 // strtod reads a lone "." or "-." as 0
		}
		v = Value{Kind: KindFloat, Float: f}
	case tokString, tokStringEscaped:
		s, err := p.quoted()
		if err != nil {
			return v, err
		}
		v = Value{Kind: KindString, Str: s}
	case tokStringBare:
		v = Value{Kind: KindString, Str: tok}
	default:
		return v, p.errorf("expected a value, found %v", p.t)
	}
	p.next(p.t)
	return v, nil
}

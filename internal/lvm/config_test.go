package lvm

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	text := `# a comment
top = 1
vg0 {   # trailing comment
	id = "abc"
	neg = -42
	plus = +7
	octal = 010
	float = 1.5
	lead = .25
	empty = []
	list = [ "a", 'b' , c , 1, 2.0 ]
	bare = [ 1, c, "d" ]
	nocomma = ["x" "y" 'z']
	esc = "say \"hi\" \\ \n"
	single = 'it''s' = 2
	"quoted key" = 1
	a/b/c = "deep"
	sub {
		x = 1
		x = 2
	}
	sub { y = 3 }
}
trailing = "after"` + "\x00garbage { ignored"

	root, err := ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := root.Int("top"); !ok || v != 1 {
		t.Errorf("top = %v %v", v, ok)
	}
	if v, ok := root.Str("trailing"); !ok || v != "after" {
		t.Errorf("trailing = %q %v (text ends at the NUL)", v, ok)
	}
	if len(root.Children) != 3 {
		t.Errorf("%d top-level nodes, want 3", len(root.Children))
	}
	vg, ok := root.Section("vg0")
	if !ok {
		t.Fatal("no vg0 section")
	}
	ints := map[string]int64{"neg": -42, "plus": 7, "octal": 8, "quoted key": 1}
	for k, want := range ints {
		if v, ok := vg.Int(k); !ok || v != want {
			t.Errorf("%s = %v %v, want %d", k, v, ok, want)
		}
	}
	if n := vg.Find("float"); n == nil || n.Values[0].Kind != KindFloat || n.Values[0].Float != 1.5 {
		t.Errorf("float = %+v", n)
	}
	if n := vg.Find("lead"); n == nil || n.Values[0].Float != .25 {
		t.Errorf("lead = %+v", n)
	}
	if n := vg.Find("empty"); n == nil || !n.IsArray || len(n.Values) != 1 || n.Values[0].Kind != KindEmptyArray {
		t.Errorf("empty = %+v", n)
	}
	list, _ := vg.List("list")
	want := []Value{{Kind: KindString, Str: "a"}, {Kind: KindString, Str: "b"}, {Kind: KindString, Str: "c"},
		{Kind: KindInt, Int: 1}, {Kind: KindFloat, Float: 2}}
	if !reflect.DeepEqual(list, want) {
		t.Errorf("list = %v, want %v", list, want)
	}
	// lvm2's quirk: a bare word after a comma runs to the next space, so "c," keeps its comma.
	if l, _ := vg.List("bare"); len(l) != 3 || l[1].Str != "c," || l[2].Str != "d" {
		t.Errorf("bare = %v", l)
	}
	if l, _ := vg.List("nocomma"); len(l) != 3 || l[2].Str != "z" {
		t.Errorf("nocomma = %v", l)
	}
	if s, _ := vg.Str("esc"); s != `say "hi" \ \n` {
		t.Errorf("esc = %q", s)
	}
	// 'it''s' is two single-quoted strings: a value, then a key.
	if n := vg.Find("single"); n == nil || n.Values[0].Str != "it" {
		t.Errorf("single = %+v", n)
	}
	if v, ok := vg.Int("s"); !ok || v != 2 {
		t.Errorf("s = %v %v", v, ok)
	}
	if a, ok := vg.Section("a"); !ok {
		t.Error("a/b/c did not make section a")
	} else if b, ok := a.Section("b"); !ok {
		t.Error("a/b/c did not make section b")
	} else if s, _ := b.Str("c"); s != "deep" {
		t.Errorf("a/b/c = %q", s)
	}
	// Duplicates are kept; lookups take the first, as lvm2 does.
	sub, _ := vg.Section("sub")
	if v, _ := sub.Int("x"); v != 1 {
		t.Errorf("sub/x = %d, want the first, 1", v)
	}
	if sub.Find("y") != nil {
		t.Error("the second sub section was merged into the first")
	}
	// A scalar is a list of one; a list answers Str with its first element.
	if l, ok := vg.List("id"); !ok || len(l) != 1 {
		t.Errorf("List(id) = %v %v", l, ok)
	}
	if s, ok := vg.Str("list"); !ok || s != "a" {
		t.Errorf("Str(list) = %q %v", s, ok)
	}
	if _, ok := vg.Int("id"); ok {
		t.Error("Int of a string succeeded")
	}
	if _, ok := vg.Section("id"); ok {
		t.Error("Section of a value succeeded")
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{`a = `, "expected a value"},
		{`a = "open`, "unterminated string"},
		{`a = "open\"`, "unterminated string"},
		{`a = 'open`, "unterminated string"},
		{`a { b = 1`, "not closed"},
		{`a = 1 }`, "expected a key"},
		{`= 1`, "expected a key"},
		{`a 1`, "expected '='"},
		{`a = [1, 2`, "expected a value"},
		{`a = 99999999999999999999`, "bad integer"},
		{`a = 08`, "bad integer"},
		{`a = -`, "bad integer"},
		{`a = [ { ]`, "expected a value"},
		// As in lvm2: after a number (or a bare word) the next word is a key,
		// so numbers need commas, and a bare word swallows a following comma.
		{`a = [1 2]`, "expected a value"},
		{`a = [1, b,2]`, "expected a value"},
		{`a = [x,y]`, "expected a value"},
		{`"" = 1`, "empty section identifier"},
		{strings.Repeat("a {", 100) + strings.Repeat("}", 100), "nested deeper"},
	} {
		_, err := ParseConfig([]byte(tc.text))
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%q) = %v, want a ConfigError with %q", tc.text, err, tc.want)
		}
	}
	// lvm2 replaces a creation_time that does not fit.
	root, err := ParseConfig([]byte("creation_time = 99999999999999999999"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := root.Int("creation_time"); v != creationTimeFallback {
		t.Errorf("creation_time = %d", v)
	}
	// Line numbers in errors.
	_, err = ParseConfig([]byte("a = 1\n# c\nb = \"x\n"))
	if ce := (*ConfigError)(nil); !errors.As(err, &ce) || ce.Line != 3 {
		t.Errorf("error %v, want line 3", err)
	}
}

func TestParseConfigEmpty(t *testing.T) {
	for _, text := range []string{"", "   \n# only a comment", "\x00a = 1"} {
		root, err := ParseConfig([]byte(text))
		if err != nil || len(root.Children) != 0 {
			t.Errorf("ParseConfig(%q) = %+v, %v", text, root, err)
		}
	}
}

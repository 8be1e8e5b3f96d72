package filter

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// Subjects as Envoy 1.40 prints them (X509_NAME_print_ex with
// XN_FLAG_RFC2253: most specific RDN first, specials backslash-escaped,
// bytes outside printable ASCII as \XX).
func TestSubjectCN(t *testing.T) {
	for _, tt := range []struct{ subject, want string }{
		{"CN=device-42,O=acme", "device-42"},
		{"O=acme,CN=device-42", "device-42"},
		{"CN=device-42", "device-42"},
		{"CN=a\\,b\\+c\\;d\\<e\\>f\\\"g\\\\h,O=x", `a,b+c;d<e>f"g\h`},
		{"CN=\\#hash\\ ", "#hash "},
		{"CN=\\ lead", " lead"},
		{"CN=d\\C3\\A9vice,O=acme", "dévice"},
		{"CN=d\\c3\\a9vice", "dévice"},
		{"CN=a=b", "a=b"},
		{"UID=42+CN=multi,O=acme", "multi"},
		{"cn=lower", "lower"},
		{"commonName=long", "long"},
		{"2.5.4.3=oid,1.2.3.4=#0403616263", "oid"},
		{"OID.2.5.4.3=oid-prefixed", "oid-prefixed"},
		{"CN=,O=acme", ""},
		{"C=DE, CN=spaced", "spaced"},
	} {
		got, err := subjectCN(tt.subject)
		if err != nil || got != tt.want {
			t.Errorf("subjectCN(%q) = %q, %v; want %q", tt.subject, got, err, tt.want)
		}
	}
}

func TestSubjectCNRefuses(t *testing.T) {
	for _, tt := range []struct {
		subject string
		want    error
	}{
		{"O=acme", errNoCN},
		{"", errNoCN},
		{"CN=one,CN=two", nil}, // ambiguous: an error naming the count
		{"CN=one+CN=two", nil},
		{"CN=#0c03616263", errCNNotString},
		{"CN=bad\\", errSubjectMalformed},
		{"CN=bad\\4", errSubjectMalformed},
		{"CN=bad\\4x", errSubjectMalformed},
		{"CN=bad\\q", errSubjectMalformed},
		{"CN=x,", errSubjectMalformed},
		{"CN=x,O", errSubjectMalformed},
		{"=x", errSubjectMalformed},
		{"CN=#abc", errSubjectMalformed},
		{"CN=#", errSubjectMalformed},
		{"CN=\\FF\\FE", errCNNotUTF8},
	} {
		got, err := subjectCN(tt.subject)
		if err == nil {
			t.Errorf("subjectCN(%q) = %q, want an error", tt.subject, got)
			continue
		}
		if tt.want != nil && err != tt.want {
			t.Errorf("subjectCN(%q): %v, want %v", tt.subject, err, tt.want)
		}
		if tt.want == nil && !strings.Contains(err.Error(), "2 CNs") {
			t.Errorf("subjectCN(%q): %v, want the CN count", tt.subject, err)
		}
		if strings.Contains(err.Error(), tt.subject) && tt.subject != "" {
			t.Errorf("subjectCN(%q): the error quotes the subject: %v", tt.subject, err)
		}
	}
}

// escapeRFC4514 writes a value the way OpenSSL's RFC 2253 printer does, for
// the round-trip fuzz target.
func escapeRFC4514(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c < 0x20 || c >= 0x7f:
			b.WriteString("\\")
			b.WriteString(strings.ToUpper(string("0123456789abcdef"[c>>4]) + string("0123456789abcdef"[c&15])))
		case strings.IndexByte(",+\"\\<>;", c) >= 0,
			c == '#' && i == 0,
			c == ' ' && (i == 0 || i == len(v)-1):
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func FuzzSubjectCN(f *testing.F) {
	for _, s := range []string{"device-42", "a,b+c", " #x ", "dévice", "", "=", "\\", "\x00\n"} {
		f.Add(s, "acme")
	}
	f.Fuzz(func(t *testing.T, cn, org string) {
		// Any input: no panic, and a CN only when it is valid UTF-8.
		if got, err := subjectCN(cn); err == nil && !utf8.ValidString(got) {
			t.Fatalf("subjectCN(%q) = %q, not UTF-8", cn, got)
		}
		// A subject printed from real values gives the CN back exactly.
		if !utf8.ValidString(cn) {
			return
		}
		subject := "CN=" + escapeRFC4514(cn) + ",O=" + escapeRFC4514(org)
		got, err := subjectCN(subject)
		if err != nil || got != cn {
			t.Fatalf("subjectCN(%q) = %q, %v; want %q", subject, got, err, cn)
		}
	})
}

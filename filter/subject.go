package filter

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Errors of subjectCN. They go into log lines, so they never quote the
// subject.
var (
	errSubjectMalformed = errors.New("the certificate subject is not a valid RFC 4514 string")
	errNoCN             = errors.New("the certificate subject has no CN")
	errCNNotString      = errors.New("the certificate CN is not a character string")
	errCNNotUTF8        = errors.New("the certificate CN is not valid UTF-8")
)

// subjectCN returns the common name in a certificate subject, written as
// Envoy gives it: the RFC 2253 string form (RFC 4514 is its successor),
// most specific RDN first, with ',' between RDNs and '+' inside a
// multi-valued RDN. Special characters in values are backslash-escaped,
// and bytes outside printable ASCII appear as \XX pairs that spell UTF-8.
//
// A subject with several CNs is refused: which one names the client would
// be a guess, and a CA that signs such certificates should not have its
// clients routed by either. A value in the #hex form (a CN that is not a
// character string) is refused too.
func subjectCN(subject string) (string, error) {
	var cn string
	found := 0
	for i := 0; i < len(subject); {
		eq := strings.IndexByte(subject[i:], '=')
		if eq < 0 {
			return "", errSubjectMalformed
		}
		typ := strings.TrimSpace(subject[i : i+eq])
		if typ == "" {
			return "", errSubjectMalformed
		}
		value, hexForm, next, err := rdnValue(subject, i+eq+1)
		if err != nil {
			return "", err
		}
		if isCommonName(typ) {
			found++
			if hexForm {
				return "", errCNNotString
			}
			cn = value
		}
		i = next
		if i < len(subject) { // at a ',' or '+' separator
			i++
			if i == len(subject) {
				return "", errSubjectMalformed // a trailing separator
			}
		}
	}
	switch found {
	case 0:
		return "", errNoCN
	case 1:
		if !utf8.ValidString(cn) {
			return "", errCNNotUTF8
		}
		return cn, nil
	}
	return "", fmt.Errorf("the certificate subject has %d CNs, and which one names the client is ambiguous", found)
}

// isCommonName reports whether an attribute type names the CN, by short
// name, long name or OID (2.5.4.3).
func isCommonName(typ string) bool {
	typ = strings.TrimPrefix(strings.TrimPrefix(typ, "OID."), "oid.")
	return strings.EqualFold(typ, "CN") || strings.EqualFold(typ, "commonName") || typ == "2.5.4.3"
}

// rdnValue decodes the attribute value starting at s[i], up to the next
// unescaped ',' or '+' or the end, and returns it with the index of that
// separator. hexForm is set for a '#' value, which is returned undecoded.
func rdnValue(s string, i int) (value string, hexForm bool, next int, err error) {
	if i < len(s) && s[i] == '#' {
		end := i + 1
		for end < len(s) && s[end] != ',' && s[end] != '+' {
			if !isHex(s[end]) {
				return "", false, 0, errSubjectMalformed
			}
			end++
		}
		if (end-i-1)%2 != 0 || end == i+1 {
			return "", false, 0, errSubjectMalformed
		}
		return s[i:end], true, end, nil
	}
	var b strings.Builder
	for i < len(s) {
		c := s[i]
		switch {
		case c == ',' || c == '+':
			return b.String(), false, i, nil
		case c != '\\':
			b.WriteByte(c)
			i++
		case i+1 < len(s) && isHex(s[i+1]): // no special character is a hex digit
			if i+2 >= len(s) || !isHex(s[i+2]) {
				return "", false, 0, errSubjectMalformed // half a hex pair
			}
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 3
		case i+1 < len(s) && strings.IndexByte(` "#+,;<=>\`, s[i+1]) >= 0:
			b.WriteByte(s[i+1])
			i += 2
		default:
			return "", false, 0, errSubjectMalformed // a lone or unknown escape
		}
	}
	return b.String(), false, i, nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

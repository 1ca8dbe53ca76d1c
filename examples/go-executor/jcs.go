package main

// Strict JSON and RFC 8785 (JCS) canonical JSON, as far as this executor needs them.
//
// encoding/json keeps the last of two duplicate keys and parses numbers as float64; neither is
// acceptable for parameters whose digest a token binds ({"n":1000,"n":5} has no single
// meaning). So parameters are read token by token: duplicate keys, nesting deeper than 32 and
// integers beyond ±(2^53−1) are refused. This example accepts integer numbers only (no
// fractions or exponents) and refuses the rest, rather than carry ECMAScript number
// formatting; strings, booleans, null, arrays and objects are canonicalised in full.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"unicode/utf16"
)

const maxDepth = 32
const maxSafeInteger = 1<<53 - 1

// parseStrict reads one JSON value from data and nothing after it.
func parseStrict(data []byte) (interface{}, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	value, err := readValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	return value, nil
}

func readValue(dec *json.Decoder, depth int) (interface{}, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		if depth >= maxDepth {
			return nil, fmt.Errorf("nesting deeper than %d", maxDepth)
		}
		switch t {
		case '{':
			obj := map[string]interface{}{}
			for dec.More() {
				keyTok, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, ok := keyTok.(string)
				if !ok {
					return nil, errors.New("object key is not a string")
				}
				if _, dup := obj[key]; dup {
					return nil, fmt.Errorf("duplicate key %q", key)
				}
				v, err := readValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				obj[key] = v
			}
			_, err := dec.Token() // '}'
			return obj, err
		case '[':
			arr := []interface{}{}
			for dec.More() {
				v, err := readValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := dec.Token() // ']'
			return arr, err
		}
		return nil, errors.New("unexpected delimiter")
	case json.Number:
		i, err := strconv.ParseInt(string(t), 10, 64)
		if err != nil || i > maxSafeInteger || i < -maxSafeInteger {
			return nil, fmt.Errorf("number %s is not an integer within ±(2^53−1)", t)
		}
		return i, nil
	default: // string, bool, nil
		return t, nil
	}
}

// canonical writes the RFC 8785 form of a value parseStrict returned.
func canonical(v interface{}) ([]byte, error) {
	var out bytes.Buffer
	if err := writeCanonical(&out, v); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func writeCanonical(out *bytes.Buffer, v interface{}) error {
	switch t := v.(type) {
	case nil:
		out.WriteString("null")
	case bool:
		out.WriteString(strconv.FormatBool(t))
	case int64:
		out.WriteString(strconv.FormatInt(t, 10))
	case string:
		writeString(out, t)
	case []interface{}:
		out.WriteByte('[')
		for i, item := range t {
			if i > 0 {
				out.WriteByte(',')
			}
			if err := writeCanonical(out, item); err != nil {
				return err
			}
		}
		out.WriteByte(']')
	case map[string]interface{}:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		// Members sorted by the UTF-16 code units of their names.
		sort.Slice(keys, func(i, j int) bool { return lessUTF16(keys[i], keys[j]) })
		out.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				out.WriteByte(',')
			}
			writeString(out, k)
			out.WriteByte(':')
			if err := writeCanonical(out, t[k]); err != nil {
				return err
			}
		}
		out.WriteByte('}')
	default:
		return fmt.Errorf("%T is not a JSON value", v)
	}
	return nil
}

func lessUTF16(a, b string) bool {
	ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
	for i := 0; i < len(ua) && i < len(ub); i++ {
		if ua[i] != ub[i] {
			return ua[i] < ub[i]
		}
	}
	return len(ua) < len(ub)
}

func writeString(out *bytes.Buffer, s string) {
	out.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			out.WriteString(`\"`)
		case '\\':
			out.WriteString(`\\`)
		case '\b':
			out.WriteString(`\b`)
		case '\t':
			out.WriteString(`\t`)
		case '\n':
			out.WriteString(`\n`)
		case '\f':
			out.WriteString(`\f`)
		case '\r':
			out.WriteString(`\r`)
		default:
			if r < 0x20 {
				fmt.Fprintf(out, `\u%04x`, r)
			} else {
				out.WriteRune(r)
			}
		}
	}
	out.WriteByte('"')
}

package main

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// record is what the sink reads of a Tagging: its id and when the event happened.
type record struct {
	id        string
	eventTime time.Time
	hasTime   bool
}

// fields calls visit for every field of the protobuf message b, with its number, wire type
// and value bytes (for varints, the decoded value in v).
func fields(b []byte, visit func(num protowire.Number, typ protowire.Type, v uint64, value []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			visit(num, typ, v, nil)
			b = b[m:]
		case protowire.BytesType:
			value, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			visit(num, typ, 0, value)
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	return nil
}

// parseTagging reads id (field 1) and event_time (field 7, a google.protobuf.Timestamp).
func parseTagging(b []byte) (record, error) {
	var r record
	var inner error
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, value []byte) {
		switch {
		case num == 1 && typ == protowire.BytesType:
			r.id = string(value)
		case num == 7 && typ == protowire.BytesType:
			var seconds, nanos int64
			inner = fields(value, func(n protowire.Number, t protowire.Type, v uint64, _ []byte) {
				if t != protowire.VarintType {
					return
				}
				switch n {
				case 1:
					seconds = int64(v)
				case 2:
					nanos = int64(int32(v))
				}
			})
			r.eventTime = time.Unix(seconds, nanos)
			r.hasTime = true
		}
	})
	if err == nil {
		err = inner
	}
	if err != nil {
		return record{}, fmt.Errorf("malformed Tagging: %w", err)
	}
	return r, nil
}

// parseBatch returns the records of a TaggingBatch (field 1, repeated Tagging).
func parseBatch(b []byte) ([]record, error) {
	var out []record
	var inner error
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, value []byte) {
		if num != 1 || typ != protowire.BytesType || inner != nil {
			return
		}
		r, e := parseTagging(value)
		if e != nil {
			inner = e
			return
		}
		out = append(out, r)
	})
	if err == nil {
		err = inner
	}
	if err != nil {
		return nil, fmt.Errorf("malformed TaggingBatch: %w", err)
	}
	return out, nil
}

// encodeResponse builds StreamMetricResponse{received: n}.
func encodeResponse(n uint64) []byte {
	b := []byte{}
	if n == 0 {
		return b // proto3 leaves a zero out
	}
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	return protowire.AppendVarint(b, n)
}

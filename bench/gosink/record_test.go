package main

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

func tagging(id string, seconds int64, nanos int32) []byte {
	var ts []byte
	ts = protowire.AppendTag(ts, 1, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(seconds))
	ts = protowire.AppendTag(ts, 2, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(nanos))
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, id)
	b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 42)
	b = protowire.AppendTag(b, 7, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	return b
}

func TestParseTaggingReadsIDAndEventTime(t *testing.T) {
	r, err := parseTagging(tagging("rec-1", 1700000000, 250))
	if err != nil {
		t.Fatal(err)
	}
	if r.id != "rec-1" || !r.hasTime || !r.eventTime.Equal(time.Unix(1700000000, 250)) {
		t.Fatalf("got %+v", r)
	}
}

func TestParseBatchReadsEveryRecord(t *testing.T) {
	var b []byte
	for _, id := range []string{"a", "b", "c"} {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, tagging(id, 1, 0))
	}
	records, err := parseBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 3 || records[0].id != "a" || records[2].id != "c" {
		t.Fatalf("got %+v", records)
	}
}

func TestParseTaggingRejectsTruncatedInput(t *testing.T) {
	b := tagging("rec-1", 1, 0)
	if _, err := parseTagging(b[:len(b)-3]); err == nil {
		t.Fatal("a truncated message parsed")
	}
}

func TestQuantileIsNearestRank(t *testing.T) {
	samples := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if quantile(samples, 0.5) != 5 || quantile(samples, 0.9) != 9 || quantile(samples, 1) != 10 {
		t.Fatal("unexpected quantiles")
	}
	if quantile(nil, 0.5) != 0 {
		t.Fatal("empty samples")
	}
}

package main

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	// Registers the "proto" codec that the health service needs.
	_ "google.golang.org/grpc/encoding/proto"
)

// rawCodec hands the Havilah handlers each message as the bytes that arrived, so the sink
// needs no generated code; any other message (the health service's) goes to the proto codec.
type rawCodec struct {
	proto encoding.CodecV2
}

func newRawCodec() rawCodec {
	return rawCodec{proto: encoding.GetCodecV2("proto")}
}

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(*[]byte); ok {
		return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
	}
	if c.proto == nil {
		return nil, fmt.Errorf("no codec for %T", v)
	}
	return c.proto.Marshal(v)
}

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if b, ok := v.(*[]byte); ok {
		// Materialize copies: gRPC frees data's buffers when this returns.
		*b = data.Materialize()
		return nil
	}
	if c.proto == nil {
		return fmt.Errorf("no codec for %T", v)
	}
	return c.proto.Unmarshal(data, v)
}

// Name is the content subtype: clients send application/grpc (that is, proto).
func (rawCodec) Name() string { return "proto" }

// Command gosink is a fast Havilah server for benchmarks and tests: it implements
// tagging.v1.Havilah (StreamMetric and StreamMetricBatch) without generated code, counts
// records, calls and unique ids, keeps every record's latency (receive time minus event_time),
// and serves those figures as JSON over HTTP.
//
// Usage:
//
//	gosink -listen 127.0.0.1:0 -stats 127.0.0.1:0 [-per-record 50us] [-single-only] [-ids FILE]
//
// When ready it prints one line: LISTEN <host:port> STATS <host:port>.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const serviceName = "tagging.v1.Havilah"

// havilah is the handler type that the service description names.
type havilah interface {
	streamMetric(stream grpc.ServerStream) error
	streamMetricBatch(stream grpc.ServerStream) error
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*havilah)(nil),
	Streams: []grpc.StreamDesc{
		{
			StreamName:    "StreamMetric",
			ClientStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				return srv.(havilah).streamMetric(stream)
			},
		},
		{
			StreamName:    "StreamMetricBatch",
			ClientStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				return srv.(havilah).streamMetricBatch(stream)
			},
		},
	},
	Metadata: "tagging/v1/tagging.proto",
}

// sink implements havilah.
type sink struct {
	perRecord  time.Duration
	singleOnly bool
	stats      *stats
	idsMu      sync.Mutex
	ids        *bufio.Writer
}

func (s *sink) streamMetric(stream grpc.ServerStream) error {
	return s.serve(stream, false)
}

func (s *sink) streamMetricBatch(stream grpc.ServerStream) error {
	if s.singleOnly {
		return status.Error(codes.Unimplemented, "StreamMetricBatch is not implemented")
	}
	return s.serve(stream, true)
}

// serve reads the whole stream, then costs perRecord per record, writes the ids, and answers.
func (s *sink) serve(stream grpc.ServerStream, batch bool) error {
	var ids []string
	var latencyMs []float64
	for {
		var msg []byte
		if err := stream.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
		received := time.Now()
		var records []record
		if batch {
			rs, err := parseBatch(msg)
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			records = rs
		} else {
			r, err := parseTagging(msg)
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			records = []record{r}
		}
		for _, r := range records {
			ids = append(ids, r.id)
			if r.hasTime {
				latencyMs = append(latencyMs, float64(received.Sub(r.eventTime))/float64(time.Millisecond))
			}
		}
	}
	if s.perRecord > 0 && len(ids) > 0 {
		time.Sleep(time.Duration(len(ids)) * s.perRecord)
	}
	if err := s.writeIDs(ids); err != nil {
		return status.Error(codes.Internal, "writing ids: "+err.Error())
	}
	s.stats.addCall(batch, ids, latencyMs)
	response := encodeResponse(uint64(len(ids)))
	return stream.SendMsg(&response)
}

// writeIDs appends the ids of one call to the ids file, one per line, when there is one.
func (s *sink) writeIDs(ids []string) error {
	if s.ids == nil || len(ids) == 0 {
		return nil
	}
	s.idsMu.Lock()
	defer s.idsMu.Unlock()
	for _, id := range ids {
		if _, err := s.ids.WriteString(id); err != nil {
			return err
		}
		if err := s.ids.WriteByte('\n'); err != nil {
			return err
		}
	}
	return s.ids.Flush()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "gRPC address")
	statsAddr := flag.String("stats", "127.0.0.1:0", "HTTP address of /stats and /reset")
	perRecord := flag.Duration("per-record", 0, "time each record costs, spent once per call after the stream ended")
	singleOnly := flag.Bool("single-only", false, "answer StreamMetricBatch with UNIMPLEMENTED")
	idsPath := flag.String("ids", "", "append every received id to this file, one per line")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.LUTC)
	log.SetPrefix("gosink: ")

	s := &sink{perRecord: *perRecord, singleOnly: *singleOnly, stats: newStats()}
	if *idsPath != "" {
		f, err := os.OpenFile(*idsPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatalf("opening ids file: %v", err)
		}
		s.ids = bufio.NewWriterSize(f, 1<<16)
		defer f.Close()
	}

	grpcListener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listening for gRPC: %v", err)
	}
	statsListener, err := net.Listen("tcp", *statsAddr)
	if err != nil {
		log.Fatalf("listening for stats: %v", err)
	}

	server := grpc.NewServer(
		grpc.ForceServerCodecV2(newRawCodec()),
		grpc.MaxRecvMsgSize(64<<20),
	)
	server.RegisterService(&serviceDesc, s)
	healthServer := health.NewServer()
	healthServer.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthServer.SetServingStatus(serviceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(server, healthServer)

	httpServer := &http.Server{Handler: s.stats.handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpServer.Serve(statsListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatalf("stats server: %v", err)
		}
	}()
	go func() {
		if err := server.Serve(grpcListener); err != nil {
			log.Fatalf("gRPC server: %v", err)
		}
	}()

	// os.Stdout is not buffered in Go: the line is out when Printf returns.
	fmt.Printf("LISTEN %s STATS %s\n", grpcListener.Addr(), statsListener.Addr())

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	_ = httpServer.Close()
	server.Stop()
	if s.ids != nil {
		s.idsMu.Lock()
		_ = s.ids.Flush()
		s.idsMu.Unlock()
	}
}

// gRPC echo service of Kite's kernel tests, on grpc-go (Debian's golang-google-grpc-dev,
// built offline in GOPATH mode by kite_testkit::grpc).
//
// Usage:
//
//	grpc_echo server PORT
//	grpc_echo client TARGET CALLS CONCURRENCY SPEC [churn]
//
// Same service, messages and command line as grpc_echo.py (read its docstring): raw-bytes
// messages "DELAY_MS CODE N" to kite.test.Echo/{Unary,Lookup,Stream}.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const service = "kite.test.Echo"

// raw passes message bytes through: no protobuf, no generated code.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string   { return "proto" }
func (raw) String() string { return "proto" }

func parse(req []byte) (time.Duration, int, int) {
	f := strings.Fields(string(req))
	ms, _ := strconv.ParseFloat(f[0], 64)
	code, _ := strconv.Atoi(f[1])
	n := 1
	if len(f) > 2 {
		n, _ = strconv.Atoi(f[2])
	}
	return time.Duration(ms * float64(time.Millisecond)), code, n
}

func handle(_ interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if md, ok := metadata.FromIncomingContext(stream.Context()); ok {
		if v := md.Get("x-kite-call"); len(v) > 0 {
			stream.SetHeader(metadata.Pairs("x-kite-echo", v[0]))
		}
	}
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	delay, code, n := parse(req)
	time.Sleep(delay)
	switch method {
	case "/" + service + "/Unary", "/" + service + "/Lookup":
		if code == 0 {
			return stream.SendMsg(&req)
		}
	case "/" + service + "/Stream":
		for i := 0; i < n; i++ {
			msg := []byte(fmt.Sprintf("message %d", i))
			if err := stream.SendMsg(&msg); err != nil {
				return err
			}
		}
	default:
		return status.Error(codes.Unimplemented, method)
	}
	if code != 0 {
		return status.Errorf(codes.Code(code), "kite test status %d", code)
	}
	return nil
}

func server(port string) {
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer(grpc.CustomCodec(raw{}), grpc.UnknownServiceHandler(handle))
	if err := s.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(target string, calls, concurrency int, spec string, churn bool) {
	type call struct{ method, req string }
	var plan []call
	for _, item := range strings.Split(spec, ",") {
		f := strings.Split(item, ":")
		n := "1"
		if len(f) > 3 {
			n = f[3]
		}
		plan = append(plan, call{f[0], f[1] + " " + f[2] + " " + n})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := make([][]interface{}, calls)
	var mu sync.Mutex
	next := 0
	echoed := 0
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= calls {
					return
				}
				c := plan[i%len(plan)]
				path := "/" + service + "/" + c.method
				req := []byte(c.req)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				id := ""
				if churn {
					b := make([]byte, 24)
					rand.Read(b)
					id = fmt.Sprintf("%08d-%s", i, hex.EncodeToString(b))
					ctx = metadata.AppendToOutgoingContext(ctx, "x-kite-call", id)
				}
				var header, trailer metadata.MD
				t0 := time.Now()
				var first time.Time
				var err error
				if c.method == "Stream" {
					desc := &grpc.StreamDesc{ServerStreams: true}
					var s grpc.ClientStream
					s, err = conn.NewStream(ctx, desc, path, grpc.ForceCodec(raw{}))
					if err == nil {
						err = s.SendMsg(&req)
					}
					if err == nil {
						err = s.CloseSend()
					}
					for err == nil {
						var msg []byte
						err = s.RecvMsg(&msg)
						if err == nil && first.IsZero() {
							first = time.Now()
						}
					}
					if err.Error() == "EOF" {
						err = nil
					}
					if s != nil {
						header, _ = s.Header()
						trailer = s.Trailer()
					}
				} else {
					var resp []byte
					err = conn.Invoke(ctx, path, &req, &resp, grpc.ForceCodec(raw{}), grpc.Header(&header), grpc.Trailer(&trailer))
				}
				t1 := time.Now()
				cancel()
				if first.IsZero() {
					first = t1
				}
				code := int(status.Code(err))
				if id != "" {
					for _, v := range append(header.Get("x-kite-echo"), trailer.Get("x-kite-echo")...) {
						if v == id {
							mu.Lock()
							echoed++
							mu.Unlock()
							break
						}
					}
				}
				out[i] = []interface{}{c.method, code, float64(first.Sub(t0)) / 1e6, float64(t1.Sub(t0)) / 1e6}
			}
		}()
	}
	wg.Wait()
	conn.Close()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"calls": out, "echoed": echoed})
}

func main() {
	a := os.Args
	if len(a) == 3 && a[1] == "server" {
		server(a[2])
		return
	}
	if (len(a) == 6 || len(a) == 7 && a[6] == "churn") && a[1] == "client" {
		calls, _ := strconv.Atoi(a[3])
		conc, _ := strconv.Atoi(a[4])
		client(a[2], calls, conc, a[5], len(a) == 7)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: grpc_echo server PORT | client TARGET CALLS CONCURRENCY SPEC [churn]")
	os.Exit(2)
}

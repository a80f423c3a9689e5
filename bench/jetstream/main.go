// A JetStream publisher for bench/compare.sh: the Go client's asynchronous publish, as the
// performance issue's figures for JetStream were measured, with up to 2,000 publishes
// waiting for their acknowledgement (Slipstream's bench keeps the same window).
//
//	jetstream NATS_URL STREAM MESSAGES VALUE_SIZE [CONSUMER_URL...]
//
// Creates STREAM (3 replicas, subject STREAM), publishes MESSAGES payloads of VALUE_SIZE
// bytes, waits for every acknowledgement, checks that the stream holds them all, and prints
// the publishes acknowledged per second. With CONSUMER_URLs, an ordered consumer on each
// (subscribed before the first publish) must receive every message too, and the rate
// printed is messages per second until the last consumer had the last one: JetStream's
// counterpart of Slipstream's writes applied and pushed to an app on every node. Built by
// compare.sh in GOPATH mode from Debian's golang-go and golang-github-nats-io-go-nats-dev, so
// nothing is fetched.
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 5 {
		fail(fmt.Errorf("usage: jetstream NATS_URL STREAM MESSAGES VALUE_SIZE [CONSUMER_URL...]"))
	}
	url, stream, n, size := os.Args[1], os.Args[2], atoi(os.Args[3]), atoi(os.Args[4])
	nc, err := nats.Connect(url)
	check(err)
	defer nc.Close()
	failed := make(chan error, 1)
	js, err := nc.JetStream(
		nats.PublishAsyncMaxPending(2000),
		nats.PublishAsyncErrHandler(func(_ nats.JetStream, _ *nats.Msg, err error) {
			select {
			case failed <- err:
			default:
			}
		}),
	)
	check(err)
	_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{stream}, Replicas: 3})
	check(err)
	var received []chan struct{}
	for _, u := range os.Args[5:] {
		received = append(received, consume(u, stream, n))
	}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = 'x'
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		_, err := js.PublishAsync(stream, payload)
		check(err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		fail(fmt.Errorf("acknowledgements still pending after 5 minutes"))
	}
	for _, done := range received {
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			fail(fmt.Errorf("a consumer still lacked messages after 5 minutes"))
		}
	}
	elapsed := time.Since(start).Seconds()
	select {
	case err := <-failed:
		fail(fmt.Errorf("a publish failed: %v", err))
	default:
	}
	info, err := js.StreamInfo(stream)
	check(err)
	if info.State.Msgs != uint64(n) {
		fail(fmt.Errorf("the stream holds %d messages, not %d", info.State.Msgs, n))
	}
	fmt.Println(int(float64(n) / elapsed))
}

// consume subscribes an ordered consumer on url to stream; the channel closes once it has
// received n messages.
func consume(url, stream string, n int) chan struct{} {
	nc, err := nats.Connect(url)
	check(err)
	js, err := nc.JetStream()
	check(err)
	done := make(chan struct{})
	var got int64
	_, err = js.Subscribe(stream, func(_ *nats.Msg) {
		if atomic.AddInt64(&got, 1) == int64(n) {
			close(done)
		}
	}, nats.OrderedConsumer())
	check(err)
	return done
}

func atoi(s string) int {
	v, err := strconv.Atoi(s)
	check(err)
	return v
}

func check(err error) {
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "jetstream:", err)
	os.Exit(1)
}

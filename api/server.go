package api

import (
	"net/http"
	"time"
)

// Limits of the API's HTTP server. Requests are small JSON documents from
// operators and scripts; a client that is slower than these is broken or
// hostile, and must not hold a connection and its goroutine.
const (
	// ReadHeaderTimeout bounds the time to send the request headers.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds the whole request, body included: a MaxBody body
	// takes well under a second even on a slow link.
	ReadTimeout = 15 * time.Second
	// WriteTimeout bounds the time from the end of the request headers to
	// the end of the answer, the change's persisting and pushing included.
	WriteTimeout = 30 * time.Second
	// IdleTimeout closes keep-alive connections that carry no request.
	IdleTimeout = 60 * time.Second
	// MaxHeaderBytes bounds the request headers (a token and a few
	// standard headers need well under 1 KiB); beyond it, 431.
	MaxHeaderBytes = 16 << 10
)

// NewServer returns the HTTP server for handler h, with the limits above.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

# syntax=docker/dockerfile:1
# Images for docker-compose.yaml:
#   --target envoy          Envoy 1.40 with the mqtt_sticky module
#   --target control-plane  the mqtt-sticky CLI (serve, endpoints, status, broker)

ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
ARG GO_IMAGE=golang:1.26.8-bookworm

FROM ${GO_IMAGE} AS go

# The module is built inside the Envoy image itself, so it links against
# exactly the glibc it will run with (a newer build host's glibc would
# leave symbols the image cannot resolve).
FROM ${ENVOY_IMAGE} AS module
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=go /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH CGO_ENABLED=1 GOTOOLCHAIN=local
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -tags mqtt_sticky_module -buildmode=c-shared -o /out/libmqtt_sticky.so ./filter/module

FROM ${ENVOY_IMAGE} AS envoy
COPY --from=module /out/libmqtt_sticky.so /usr/local/lib/envoy/libmqtt_sticky.so
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy
COPY envoy/bootstrap.yaml /etc/envoy/envoy.yaml

FROM go AS cli
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -o /out/mqtt-sticky ./cmd/mqtt-sticky

FROM debian:bookworm-slim AS control-plane
COPY --from=cli /out/mqtt-sticky /usr/local/bin/mqtt-sticky
VOLUME /var/lib/mqtt-sticky
ENTRYPOINT ["mqtt-sticky"]
CMD ["serve", "--config", "/etc/mqtt-sticky/mqtt-sticky.yaml"]

# syntax=docker/dockerfile:1
#
# Production image of the arreglame engine: a Rust builder stage, then a small Debian
# runtime that runs the binary as an unprivileged user.
#
#   docker build -t arreglame .            (or: podman build -t arreglame .)
#   docker run --rm -p 3000:3000 -e DATABASE_URL=... -e JWT_SECRET=... arreglame
#   docker run --rm -e DATABASE_URL=... arreglame migrate     (then: seed)
#
# compose.yaml builds this file. Machines without registry access can build the equivalent
# FROM-scratch image around a locally built binary: deploy/container/Containerfile.local.

# The toolchain CI builds and tests with (rustc 1.95); override with --build-arg RUST_IMAGE=...
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Everything the build reads: the manifest (which names the benches), the sources, and the
# migrations and seeds that are embedded in the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
COPY seeds ./seeds
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin arreglame \
 && install -m 0755 target/release/arreglame /usr/local/bin/arreglame

FROM ${RUNTIME_IMAGE} AS runtime
# TLS to Gemini uses rustls with bundled roots and PostgreSQL is reached without TLS, so the
# runtime needs glibc only. A fixed uid/gid so volume permissions are predictable.
RUN groupadd --system --gid 10001 arreglame \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin arreglame \
 && mkdir -p /app/logs \
 && chown -R 10001:10001 /app
COPY --from=builder /usr/local/bin/arreglame /usr/local/bin/arreglame
WORKDIR /app
USER 10001:10001
ENV APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    LOG_LEVEL=info
EXPOSE 3000
# GET /health answers exactly {"status":"ok"}; bash's /dev/tcp needs no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && grep -qF '{\"status\":\"ok\"}' <&3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/arreglame"]
CMD ["serve"]

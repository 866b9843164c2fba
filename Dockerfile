# syntax=docker/dockerfile:1
# The `trellis` binary as `cargo build --release` makes it, in a small
# non-root image (distroless: glibc and CA roots, no shell, no package
# manager). Build from the repository root:
#   docker build -t registry.example.com/trellis:0.1.0 .
# Nothing here needs a system protoc, cmake or OpenSSL: protobuf is compiled
# by protox (pure Rust), TLS is rustls with aws-lc-rs (built by cc), and
# SQLite is bundled.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The dependency and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trellis \
    && install -D -m 0755 target/release/trellis /out/trellis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/trellis /usr/local/bin/trellis
# The uid the manifests run as (runAsUser: 10001); the data dir is a volume.
USER 10001:10001
WORKDIR /var/lib/trellis
# 50051-50055: the servers; 8080: the gateway; 9090: the admin port.
EXPOSE 50051 50052 50053 50054 50055 8080 9090
ENTRYPOINT ["/usr/local/bin/trellis"]
# The manifests name what to run (`serve auth`, `migrate`, ...).
CMD ["--help"]

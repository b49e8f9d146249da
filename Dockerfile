# Build: a full Rust toolchain, dependencies pinned by Cargo.lock.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ringseal \
 && strip target/release/ringseal

# Run: glibc and CA certificates only, no shell, non-root (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ringseal /usr/local/bin/ringseal
USER nonroot
# 7001: inbound mutual TLS (Cassandra's ssl_storage_port).
EXPOSE 7001
ENTRYPOINT ["/usr/local/bin/ringseal", "run"]
CMD ["--config", "/etc/ringseal/ringseal.toml"]

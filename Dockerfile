# Build: a full Rust toolchain, dependencies pinned by Cargo.lock.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ringseal-cli --bin ringseal \
 && strip target/release/ringseal

# Run: glibc, libgcc_s and CA certificates only, no shell. Where no registry is reachable,
# config/container/build-local.sh builds the same image from Debian packages; cli/tests/container.rs
# checks the two agree on everything below the FROM line.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ringseal /usr/local/bin/ringseal
# distroless's nonroot, numeric so that Kubernetes' runAsNonRoot can check it. Mounted config and
# key files must be readable by this uid.
USER 65532:65532
# 7001: inbound mutual TLS (Cassandra's ssl_storage_port); 9464: /metrics, /healthz, /readyz when
# [metrics] listens on 0.0.0.0:9464. No HEALTHCHECK: the image has no shell or HTTP client to run
# one, and orchestrators probe /healthz and /readyz over HTTP themselves.
EXPOSE 7001 9464
# As the systemd unit (config/ringseal.service): vector copies instead of glibc 2.36's `rep movsb`,
# several times slower on AMD Zen 3/4 for the misaligned copies rustls makes (README, "glibc's copies
# on AMD").
ENV GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0x100000
ENTRYPOINT ["/usr/local/bin/ringseal", "run"]
CMD ["--config", "/etc/ringseal/ringseal.toml"]

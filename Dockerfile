# syntax=docker/dockerfile:1.7
# One build, three small images: `docker build --target auth-svc .` (or
# case-svc, gateway, dev-issuer). Dependencies compile in their own layer, so
# a source change rebuilds only Casebook's crates.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# 1. Dependencies only: the manifests, the build script and the contracts,
#    with empty crates in place of the sources.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY auth-svc/Cargo.toml auth-svc/
COPY case-svc/Cargo.toml case-svc/
COPY gateway/Cargo.toml gateway/
COPY stack/Cargo.toml stack/
RUN mkdir -p src benches auth-svc/src case-svc/src gateway/src stack/src \
 && touch src/lib.rs auth-svc/src/lib.rs case-svc/src/lib.rs gateway/src/lib.rs stack/src/lib.rs \
 && for crate in auth-svc case-svc gateway stack; do echo 'fn main() {}' > $crate/src/main.rs; done \
 && for bench in verify gateway; do echo 'fn main() {}' > benches/$bench.rs; done \
 && cargo build --release --locked -p auth-svc -p case-svc -p gateway -p casebook-stack
# 2. Casebook itself.
COPY . .
RUN touch src/lib.rs auth-svc/src/*.rs case-svc/src/*.rs gateway/src/*.rs stack/src/*.rs \
 && cargo build --release --locked -p auth-svc -p case-svc -p gateway -p casebook-stack \
 && mkdir /out && cp target/release/auth-svc target/release/case-svc target/release/gateway target/release/casebook /out/

# Distroless: glibc and CA certificates, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER nonroot:nonroot

FROM runtime AS auth-svc
COPY --from=build /out/auth-svc /usr/local/bin/auth-svc
# Listens on 0.0.0.0:$PORT: platforms (Cloud Run) override PORT, compose and
# Kubernetes set AUTH_SVC_ADDR.
ENV PORT=50051
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/auth-svc", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/auth-svc"]

FROM runtime AS case-svc
COPY --from=build /out/case-svc /usr/local/bin/case-svc
ENV PORT=50052
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/case-svc", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/case-svc"]

FROM runtime AS gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gateway"]

# Development only: the token issuer standing in for Better Auth.
FROM runtime AS dev-issuer
COPY --from=build /out/casebook /usr/local/bin/casebook
EXPOSE 3900
ENTRYPOINT ["/usr/local/bin/casebook", "issuer"]

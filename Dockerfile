# tidings in a container: built from source, run as an unprivileged user.
#   docker build -t tidings .
#   docker run -p 7400:7400 -e TIDINGS_JWT_HS256_SECRET=$(head -c 32 /dev/urandom | base64) tidings
# See deploy/docker-compose.yml for the admin API, a data volume and a configuration file.

FROM rust:1.90-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY load-tests/Cargo.toml load-tests/Cargo.toml
COPY proto proto
RUN mkdir -p src load-tests/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > load-tests/src/main.rs \
 && cargo build --release --locked --bin tidings \
 && rm -rf src load-tests/src
COPY src src
COPY load-tests/src load-tests/src
# The demo pages (`serve --demo`), built and committed; embedded in the binary.
COPY web/dist web/dist
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tidings

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tidings --create-home tidings
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
USER tidings
WORKDIR /var/lib/tidings
ENV TIDINGS_LISTEN=0.0.0.0:7400 \
    TIDINGS_DATA_DIR=/var/lib/tidings/data
VOLUME ["/var/lib/tidings/data"]
EXPOSE 7400 7401
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:7400/readyz || exit 1
# SIGTERM drains sessions and flushes the store (give it shutdown_grace_ms + close_timeout_ms).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tidings"]
CMD ["serve"]

# One image with every Faultline service binary; docker-compose picks the
# binary per service with `command:`.
#
# The first stage builds all binaries once, in release mode.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

# The load-test image of docker-compose's `load` profile: faultline-load
# (the open-model generator, and the transfers' closed loop with its
# invariant check) and load-tests/in-compose.sh, aimed at the gateway
# (GATEWAY).
FROM debian:bookworm-slim AS load
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/faultline-load /usr/local/bin/
COPY load-tests /load-tests
CMD ["/load-tests/in-compose.sh"]

# The last stage, the default target, is a slim runtime: the binaries, CA
# certificates and curl for health checks, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 faultline
COPY --from=build /src/target/release/gateway \
                  /src/target/release/load-balancer \
                  /src/target/release/worker \
                  /src/target/release/health-monitor \
                  /src/target/release/coordinator \
                  /src/target/release/migrate \
                  /src/target/release/nats-auth-callout \
                  /usr/local/bin/
USER faultline
ENV LOG_FORMAT=json

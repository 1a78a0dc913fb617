# The flotilla image: one binary for masters, workers and the CLI.
#   docker build -t flotilla:0.2.0 .
#   docker run flotilla:0.2.0 master --id 1 --peers 1=flotilla-0:7001 --data-dir /var/lib/flotilla ...
# Kubernetes manifests using it: deploy/kubernetes/. The README's "Deploy" section has more.

FROM rust:1.95-bookworm AS build
# `flotilla --version` names this commit: the build context has no .git
# (docker build --build-arg FLOTILLA_COMMIT="$(git rev-parse --short=12 HEAD)" .).
ARG FLOTILLA_COMMIT=unknown
WORKDIR /src
COPY . .
# Only the binary, with the release profile of Cargo.toml.
RUN cargo build --release --locked --bin flotilla \
    && install -D -m 0755 target/release/flotilla /out/flotilla

FROM debian:bookworm-slim
# tini as PID 1 reaps the orphans of tasks and passes SIGTERM to flotilla, which drains a
# worker or hands a master's leadership over before it exits. Tasks get a shell and coreutils.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/flotilla --create-home flotilla
COPY --from=build /out/flotilla /usr/local/bin/flotilla
USER 10001:10001
WORKDIR /var/lib/flotilla
VOLUME ["/var/lib/flotilla"]
EXPOSE 7001
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/flotilla"]
CMD ["--help"]

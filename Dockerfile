# casegate container image. See docs/container.md.
#
#   docker build -t casegate .
#   docker run --rm -p 8080:8080 -v casegate-data:/var/lib/casegate casegate
#
# Build stage and runtime share Debian 12 (bookworm), so the glibc the binary links against is the
# one distroless/cc ships.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /build

# 1. Dependencies only, cached until a Cargo.toml, Cargo.lock or benches/ change. The real bench
#    files are copied because Cargo.toml names them in [[bench]] sections, and cargo refuses a
#    manifest whose targets are missing (`cargo build` does not compile them). The workspace's
#    crates are empty here (casegate's lib and main, crates/casegate-sandbox's lib), so this
#    layer holds every dependency compiled in release mode.
COPY Cargo.toml Cargo.lock ./
COPY crates/casegate-sandbox/Cargo.toml ./crates/casegate-sandbox/
COPY benches ./benches
RUN mkdir src crates/casegate-sandbox/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/casegate-sandbox/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src crates/casegate-sandbox/src

# 2. The crates. config/casegate.toml is compiled in (include_str!) as the built-in defaults.
#    COPY keeps the sources' older mtimes, which cargo would take as "already built" by the dummies
#    above: touch the crate roots so the real crates are always recompiled.
#    `strip` drops the symbol table the default release profile keeps (about 19 MB -> 14 MB); it
#    is a no-op once Cargo.toml's [profile.release] has `strip = true`. Panic messages keep their
#    file:line locations; only backtraces lose function names.
COPY src ./src
COPY crates ./crates
COPY config ./config
RUN touch src/main.rs src/lib.rs crates/casegate-sandbox/src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p /out/var/lib/casegate \
    && strip -o /out/casegate target/release/casegate

# ---------------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

# Binary, then the shipped defaults. The process runs in /etc/casegate, so the relative default
# `config/casegate.toml` (read by every subcommand when present) is /etc/casegate/config/casegate.toml
# and the relative default `mappings` is /etc/casegate/mappings: mount over either to replace it.
COPY --from=build /out/casegate /usr/local/bin/casegate
COPY config/casegate.toml /etc/casegate/config/casegate.toml
COPY mappings /etc/casegate/mappings
# The example payloads the shipped mappings point at (`payload_file: ../tests/fixtures/...`,
# relative to the mapping file), so `casegate check` and `casegate send-sample` work in the
# container, also on mappings mounted at /etc/casegate/mappings. About 130 KB.
COPY tests/fixtures /etc/casegate/tests/fixtures
# The embedded buffer's directory, owned by the nonroot user (65532) so that a fresh named volume
# mounted here inherits a writable owner (distroless has no shell to chown at run time).
COPY --from=build --chown=65532:65532 /out/var/lib/casegate /var/lib/casegate

WORKDIR /etc/casegate

# Configuration by environment (CASEGATE_ + key path, `__` between section and key). Any
# CASEGATE_* variable that is not a configuration key is a startup error.
ENV CASEGATE_LISTEN=0.0.0.0:8080 \
    CASEGATE_MAPPINGS=/etc/casegate/mappings \
    CASEGATE_BUFFER__PATH=/var/lib/casegate/casegate.redb \
    CASEGATE_LOG__FORMAT=json

# The embedded buffer (and its dead-letter store) lives here: keep it on a volume so an
# acknowledged case survives the container. Unused with CASEGATE_BUFFER__BACKEND=redis.
VOLUME ["/var/lib/casegate"]

EXPOSE 8080

# The distroless `nonroot` user, by number so that runtimes (Kubernetes runAsNonRoot) can tell.
USER 65532:65532

# `casegate healthcheck` GETs /healthz on the configured listen address and exits 0 on 200; no
# curl or shell is needed (there is none in distroless).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/casegate", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/casegate"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# failoverd container image. Build: docker build -t failoverd .
# Run (config and policies mounted read-only, state in a volume):
#   docker run -d --name failoverd -p 127.0.0.1:8080:8080 \
#     -v /etc/failoverd:/etc/failoverd:ro -v failoverd-state:/var/lib/failoverd failoverd
#
# No Docker engine in CI: scripts/check-dockerfile.sh replays the builder stage's steps in a
# fresh venv and runs `failoverd --version`; tests/integration/test_dockerfile.py also starts
# the daemon with the final stage's ENV and CMD. Keep the builder's RUN steps plain shell so
# that the replay stays faithful.
#
# Supply chain: the base is pinned by digest (both stages: the same image), and every Python
# package is installed from requirements.lock with its hash checked (scripts/lock.sh writes
# it). Refresh the digest with:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'

# --- builder: a self-contained venv at the same path the final image uses ---------------
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/failoverd
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip /opt/failoverd/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
# The project alone: its dependencies and build backend came from the lock above, so nothing
# is resolved or fetched here (no build isolation, no dependencies).
RUN /opt/failoverd/bin/pip install --no-deps --no-build-isolation .

# --- final: the venv on a slim base, nothing else ---------------------------------------
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
LABEL org.opencontainers.image.title="failoverd" \
      org.opencontainers.image.description="Multi-region failover orchestrator for AWS" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID so that runAsNonRoot and volume ownership can be checked and set.
RUN groupadd --system --gid 10001 failoverd \
    && useradd --system --uid 10001 --gid failoverd --home-dir /var/lib/failoverd \
       --shell /usr/sbin/nologin failoverd \
    && mkdir -p /var/lib/failoverd /etc/failoverd/policies \
    && chown failoverd:failoverd /var/lib/failoverd \
    && chmod 0700 /var/lib/failoverd
COPY --from=builder /opt/failoverd /opt/failoverd
ENV PATH=/opt/failoverd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FAILOVERD_LOG__FORMAT=json \
    FAILOVERD_HTTP__BIND=0.0.0.0 \
    FAILOVERD_HTTP__ALLOW_REMOTE=true
# The container's network namespace is private: listening on all of its addresses is what
# makes `-p 127.0.0.1:8080:8080` work (http.allow_remote says so); mutating calls still need
# the token file. Names clients use to reach it go in http.allowed_hosts.
USER 10001:10001
WORKDIR /var/lib/failoverd
VOLUME /var/lib/failoverd
EXPOSE 8080
# Not `failoverd status`: the probe must not depend on the CLI or settings being loadable.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["failoverd"]
CMD ["run", "--config", "/etc/failoverd/failoverd.yaml"]

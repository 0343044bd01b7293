# chatd container image. Build: docker build -t chatd .
# A local base can be substituted (CI builds with buildah on a base made by
# ../shared/tools/oci-base-image): --build-arg BASE=localhost/chatd-base:bookworm
ARG BASE=python:3.11-slim-bookworm

# Build stage: a virtual environment with chatd and its dependencies.
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY chatd ./chatd
COPY twisted ./twisted
RUN python3 -m venv /opt/chatd \
    && /opt/chatd/bin/pip install --no-cache-dir . \
    && /opt/chatd/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# Final stage: the environment only, no build tools, run as a non-root user.
FROM ${BASE}
COPY --from=build /opt/chatd /opt/chatd
ENV PATH="/opt/chatd/bin:${PATH}" \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/chatd --create-home --shell /usr/sbin/nologin chatd \
    && /opt/chatd/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
USER 10001:10001
WORKDIR /var/lib/chatd
# History (chatd.sqlite3) lives in the working directory.
VOLUME ["/var/lib/chatd"]
EXPOSE 9998
# Proves the server answers: sends help, expects info.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["python", "-m", "chatd.healthcheck", "--port", "9998"]
# -n: foreground; --pidfile=: no pid file, so no stale one blocks a restart.
CMD ["twistd", "-n", "--pidfile=", "chatd", "--port", "9998"]

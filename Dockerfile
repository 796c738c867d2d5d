# syncd: the daemon in a small non-root image; onnxruntime runs the model, no deep-learning framework.
# docker build -t syncd . && docker run --init -v /srv/docs:/docs:ro -v syncd-state:/var/lib/syncd syncd

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/syncd
# Dependencies first, in their own layer: they change less often than the code.
COPY pyproject.toml README.md /src/
RUN mkdir /src/syncd && touch /src/syncd/__init__.py \
    && /opt/syncd/bin/pip install /src \
    && /opt/syncd/bin/pip uninstall -y syncd \
    && rm -r /src/build /src/syncd.egg-info
COPY syncd /src/syncd
RUN /opt/syncd/bin/pip install --no-deps /src

FROM python:3.11-slim
# tini as PID 1 forwards SIGTERM to syncd and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 syncd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/syncd --shell /usr/sbin/nologin syncd \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/syncd
COPY --from=build /opt/syncd /opt/syncd
COPY docker/config.yaml /etc/syncd/config.yaml
# Reachable from other containers, so /search and /resync want a bearer token: the image's
# config reads it from the secret /run/secrets/syncd-token (`syncd run` refuses to listen
# on 0.0.0.0 without one).
# XDG_CACHE_HOME: the local model's rewritten graph, cached in the volume for the next start.
ENV PATH=/opt/syncd/bin:$PATH \
    SYNCD_SERVER__LISTEN=0.0.0.0:9187 \
    XDG_CACHE_HOME=/var/lib/syncd/.cache
# Numeric, so the host and Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
WORKDIR /var/lib/syncd
VOLUME ["/var/lib/syncd"]
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/livez', timeout=4)"]
ENTRYPOINT ["tini", "--", "syncd"]
CMD ["run", "-c", "/etc/syncd/config.yaml"]

# Sidecar gateway image: slim Python, non-root, config from a volume.
#   docker build -t sidecar .
# With no arguments it serves /etc/sidecar/sidecar.jsonnet: the image ships
# configs/docker.jsonnet there (0.0.0.0:8000 -> the app on 127.0.0.1:8080 in the same
# network namespace), and a volume of your own at /etc/sidecar replaces it:
#   docker run --network container:myapp sidecar
#   docker run -p 8000:8000 -v $PWD/my-sidecar:/etc/sidecar:ro sidecar
# Or give the command yourself:
#   docker run -p 8000:8000 -v $PWD/configs:/etc/sidecar:ro sidecar \
#       run --config /etc/sidecar/examples/local-app.jsonnet --ext-str env=prod
#   docker run -p 8000:8000 --add-host host.docker.internal:host-gateway sidecar \
#       run --upstream http://host.docker.internal:8080 --listen 0.0.0.0:8000
# Build stage: a wheel whose data path is compiled with mypyc (setup.py, SIDECAR_NATIVE=1).
# mypy type-checks the package as it compiles it, so the build is not isolated: the stage
# installs the build requirements (pyproject's [build-system]), the package's
# dependencies and the mypy that pyproject's test extra pins, plus a C compiler.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sidecar ./sidecar
COPY admin ./admin
RUN pip install --no-cache-dir 'setuptools>=77' wheel mypy==2.4.1 '.[uvloop]' \
    && SIDECAR_NATIVE=1 pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/sidecar
COPY --from=build /wheels /wheels
COPY configs ./configs
# The image refuses to build if the compiled modules do not load: it would run the data
# path interpreted, at about half the speed the README reports.
RUN pip install --no-cache-dir "$(echo /wheels/sidecar_gateway-*.whl)[uvloop]" \
    && rm -rf /wheels \
    && sidecar --version | grep -q "data path: compiled" \
    && useradd --system --uid 10001 --no-create-home sidecar \
    && mkdir -p /var/lib/sidecar && chown sidecar /var/lib/sidecar
# The default config; `import 'sidecar.libsonnet'` finds the library in the package.
COPY configs/docker.jsonnet /etc/sidecar/sidecar.jsonnet

USER 10001
VOLUME ["/etc/sidecar", "/var/lib/sidecar"]
# 8000 data plane, 9901 admin gRPC, 9902 /metrics /live /ready (bind them to 0.0.0.0
# in the config only where the network is trusted; admin defaults to loopback).
EXPOSE 8000 9901 9902
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9902/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["sidecar"]
# No --listen here: flags override the config, and a mounted config says where to listen.
CMD ["run", "--config", "/etc/sidecar/sidecar.jsonnet"]

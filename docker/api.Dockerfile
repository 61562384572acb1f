# syntax=docker/dockerfile:1
# The API image: FastAPI and saeq's core library, no torch (the API never imports it).
#   docker build -f docker/api.Dockerfile -t saeq-api:0.1.0 .
# The base is pinned by its full version tag; a registry that mirrors it can pin the digest too
# (FROM python:3.11.11-slim-bookworm@sha256:...).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY workers/ workers/
# Wheels of saeq and of exactly the `api` extra's dependencies; the runtime stage installs only these.
RUN pip wheel --no-cache-dir --wheel-dir /wheels "./[api]"

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 saeq \
 && useradd --uid 10001 --gid saeq --create-home --shell /usr/sbin/nologin saeq
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && python -c "import saeq_api.main, sys; assert 'torch' not in sys.modules, 'the API image must not import torch'"
USER 10001:10001
WORKDIR /home/saeq
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["uvicorn", "saeq_api.main:app"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

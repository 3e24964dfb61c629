# The control plane: coordinator (`sweeps run / resume`), `sweeps dashboard`, `sweeps report`, and a Ray head
# that runs no trials. No TensorFlow: the control plane never imports it.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 XDG_DATA_HOME=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweeps ./sweeps
COPY workers ./workers
COPY search_spaces ./search_spaces
RUN pip install ".[s3,tensorboard]"
RUN useradd --create-home --uid 1000 sweeps && mkdir -p /data && chown sweeps /data
USER sweeps
CMD ["sweeps", "--help"]

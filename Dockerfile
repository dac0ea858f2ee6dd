# tsp-al on a GPU server: one image for the Label Studio ML backend (`tsp-backend`, the default
# command) and the active-learning CLI (`tsp-sync`, see docker-compose.yml).
#
#   docker build -t tsp-al .
#   docker run --gpus all -p 9090:9090 -v "$PWD/models:/models" \
#     -e LABEL_STUDIO_URL=http://label-studio:8080 -e LABEL_STUDIO_API_KEY=<PAT> tsp-al
#   docker run --gpus all --entrypoint tsp-sync -v "$PWD:/work" -w /work \
#     -e LABEL_STUDIO_URL=... -e LABEL_STUDIO_API_KEY=... tsp-al retrain --project ich --gpus 8
#
# The base image ships Python, CUDA and a CUDA build of torch; pip keeps that torch (it satisfies
# torch>=2.4) and adds torchvision from the same index only if missing. Without a GPU the same
# image runs on the CPU.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TSP_MODEL_DIR=/models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tsp_model ./tsp_model
COPY tsp_labelstudio ./tsp_labelstudio
COPY tsp_backend ./tsp_backend
COPY tsp_cli ./tsp_cli
# DL3013: "." is this project; its dependency ranges live in pyproject.toml
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[backend]" \
    && useradd --create-home --uid 1000 tsp \
    && mkdir -p /models \
    && chown tsp /models

USER 1000
VOLUME ["/models"]
EXPOSE 9090

# The same one command as outside Docker; inside a container it must listen on 0.0.0.0.
# BASIC_AUTH_USER / BASIC_AUTH_PASS, LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, and the image
# sources and limits (TSP_ALLOWED_URL_PREFIXES, TSP_ALLOWED_DIRS, TSP_MAX_*; docs/backend.md) come from -e.
ENTRYPOINT ["tsp-backend"]
CMD ["--host", "0.0.0.0", "--port", "9090", "--model-dir", "/models"]

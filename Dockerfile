# The streamworker runtime image: the supervisor, non-root, with one function under /function.
#
#   docker build -t streamworker .                                   # the example function
#   docker build -t my-fn --build-arg FUNCTION_DIR=path/to/fn .      # your function folder
#   docker run --rm -e KAFKA_BROKERS=broker:9092 -p 8082:8082 streamworker
#
# Or build FROM this image and `COPY your-function/ /function/`. The function folder holds
# function.yaml and the handler module(s); its Python dependencies go in with `pip install` in a
# derived image. Health and metrics: :8082 (/live, /ready, /metrics).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamworker ./streamworker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG FUNCTION_DIR=examples/orders
# No .pyc writes: /function is read-only to the runtime user, and so can the root filesystem be.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMWORKER_HEALTH_ADDR=0.0.0.0:8082
COPY --from=build /wheels /wheels
# pip resolves the wheel's dependencies here, nuclio-sdk included (handlers `import nuclio_sdk`).
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin streamworker
WORKDIR /function
# Owned by root: the handler can read its code but not rewrite it.
COPY ${FUNCTION_DIR}/ /function/
USER 10001
EXPOSE 8082
# /ready, not /live: an unhealthy mark should also mean "a partition is stopped" or "not consuming".
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "streamworker.observability.probe", "/ready"]
ENTRYPOINT ["streamworker"]
CMD ["--config", "/function/function.yaml"]

# tokentrail in a container: the same `pip install .` as the README, on the official Python image.
#
#   docker build -t tokentrail .
#   docker run -p 8000:8000 -v tokentrail-data:/data \
#     -e TOKENTRAIL_SECRET_KEY="$(openssl rand -base64 32)" tokentrail
#
# Data (the SQLite file, key files) lives in the /data volume; for PostgreSQL set
# TOKENTRAIL_DATABASE_URL. See docs/operations.md ("Running it as a service").
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENTRAIL_DATA_DIR=/data \
    TOKENTRAIL_LOG_FORMAT=json

WORKDIR /src
COPY . /src
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin tokentrail \
    && mkdir -p /data && chown tokentrail /data && chmod 0700 /data
USER tokentrail
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["tokentrail", "serve", "--host", "0.0.0.0", "--port", "8000"]

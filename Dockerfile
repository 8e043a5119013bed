# The controller image (also runs the sample backends in compose.yaml).
FROM python:3.11-slim
# Logs and READY lines reach `docker compose logs` at once.
ENV PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY xds_server ./xds_server
COPY config ./config
RUN pip install --no-cache-dir .
ENTRYPOINT ["xds-server"]
CMD ["run", "--config", "/app/config/router_config.yaml", "--verbose"]

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY wa_consumer ./wa_consumer
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["wa-consumer"]
CMD ["run"]

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY lua lua
COPY api api
COPY workers workers
RUN pip install --no-cache-dir . && useradd --system tally
USER tally
EXPOSE 8000
CMD ["tally", "serve", "--host", "0.0.0.0", "--port", "8000"]

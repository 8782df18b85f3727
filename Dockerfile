FROM python:3.11-slim
WORKDIR /app
# The locked dependencies first, checked against their hashes (requirements.txt, made by
# .ci/lock): a change to the code alone reuses this layer.
COPY requirements.txt ./
RUN pip install --no-cache-dir --require-hashes -r requirements.txt
COPY pyproject.toml README.md ./
COPY engine engine
COPY lua lua
COPY api api
COPY workers workers
# /keys holds the secret key docker-compose generates (owned by tally, so a new volume is too).
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system tally && mkdir /keys && chown tally /keys
USER tally
EXPOSE 8000
CMD ["tally", "serve", "--host", "0.0.0.0", "--port", "8000"]

# One image for web, worker, beat and the simulated agent.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SUANLI_VAR_DIR=/var/lib/suanli

RUN apt-get update \
    && apt-get install -y --no-install-recommends gettext curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/suanli suanli \
    && mkdir -p /var/lib/suanli \
    && chown suanli:suanli /var/lib/suanli

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY core ./core
COPY providers ./providers
COPY billing ./billing
COPY marketplace ./marketplace
COPY cli ./cli
RUN pip install ".[docker]"
COPY . .
# Settings need their variables to import; nothing connects during collectstatic.
RUN SUANLI_ENV=production DJANGO_SECRET_KEY=build-only STRIPE_SECRET_KEY=build-only \
    STRIPE_WEBHOOK_SECRET=build-only DATABASE_URL=postgres://build@localhost/build \
    REDIS_URL=redis://localhost:6379/0 python manage.py collectstatic --noinput

USER suanli
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "-b", "0.0.0.0:8000", "-w", "3", "--threads", "4", "--access-logfile", "-"]

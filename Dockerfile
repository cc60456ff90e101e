# The bot as a container: gunicorn serving create_app(), the embedded journal on a volume.
#   docker build -t my-bot .
#   docker run -p 8000:8000 --env-file .env -v bot-journal:/app/var my-bot
# With REDIS_URL set, run workers from the same image: docker run --env-file .env my-bot flask --app app bot worker
FROM python:3.11-slim

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

ENV PORT=8000 JOURNAL_PATH=/app/var/journal.sqlite3
VOLUME ["/app/var"]
EXPOSE 8000
# The Procfile's web line: gunicorn runs create_app() in each worker after the fork.
CMD ["sh", "-c", "exec gunicorn 'app:create_app()' --bind 0.0.0.0:${PORT} --workers ${WEB_CONCURRENCY:-2} --worker-class gthread --threads 8 --graceful-timeout 20"]

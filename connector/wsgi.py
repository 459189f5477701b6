"""WSGI entry point for servers: ``gunicorn 'connector.wsgi:app'``."""

from connector import create_app

app = create_app()

"""WSGI entry point for servers: ``gunicorn 'connector.wsgi:app'``."""

import os

from connector import create_app

# Files Keygate writes hold buyers' names and addresses: readable by this user only (as the
# keygate command does; gunicorn's --umask would say the same).
os.umask(0o077)
app = create_app()

"""WSGI entry point for servers: ``gunicorn 'connector.wsgi:app'``."""

import os
import sys

from connector import create_app
from connector.config import ConfigError, unset_base_url_warning

# Files Keygate writes hold buyers' names and addresses: readable by this user only (as the
# keygate command does; gunicorn's --umask would say the same).
os.umask(0o077)
try:
    app = create_app()
except ConfigError as exc:
    # A line naming the setting, as the keygate command says it, never a traceback; exit
    # status 4 is gunicorn's "the app failed to load": it stops instead of forking again.
    print(f"keygate: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
# Pages and admin answers carry links (the portal's, webhook URLs): said once per worker.
if (unset := unset_base_url_warning(app.extensions["keygate.settings"])) is not None:
    print(f"keygate: warning: {unset}", file=sys.stderr, flush=True)

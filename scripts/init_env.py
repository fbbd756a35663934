"""Write a development .env on first start: debug on, a random secret key, a fresh field key.

Runs before Django can start (settings need these values), so it imports nothing of the project.
"""

import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet

TEMPLATE = """# Written by `make run` for local development. See docs/configuration.md.
DJANGO_DEBUG=true
DJANGO_SECRET_KEY={secret_key}
UMS_FIELD_KEYS={field_key}
# The demo sender delivers to the local mail catcher on 127.0.0.1.
UMS_SMTP_ALLOW_PRIVATE_NETWORKS=true
"""


def main(path: Path) -> None:
    if path.exists():
        return
    path.write_text(
        TEMPLATE.format(
            secret_key=secrets.token_urlsafe(50), field_key=Fernet.generate_key().decode()
        )
    )
    path.chmod(0o600)
    print(f"Wrote {path} with a new secret key and field encryption key.")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".env"))

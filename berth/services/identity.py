"""Identity: users, access keys, roles and the audit log, wired together once per process.

Each idea has its own module (`users`, `keys`, `members`, `audit`; checking credentials and
looking roles up is `berth.access`). `Identity` holds one of each, sharing the short-lived
caches that access checks read; callers use the parts (`services.identity.users.create_user`,
`services.identity.audit.record`), one name for each call.
"""

from __future__ import annotations

from berth.access.credentials import Credentials
from berth.access.keyring import Keyring
from berth.access.passwords import Passwords
from berth.access.roles import Roles
from berth.metadata.database import Database
from berth.services.audit import AuditLog
from berth.services.keys import Keys
from berth.services.members import Members
from berth.services.users import Users
from berth.storage.base import BlobStore

__all__ = ["Identity"]


class Identity:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        max_keys_per_project: int,
        password_slots: int,
        store: BlobStore | None = None,
    ) -> None:
        self.db = db
        passwords = Passwords(password_slots)
        self.credentials = Credentials(db, keyring, passwords)
        self.roles = Roles(db)
        self.audit = AuditLog(db)
        self.users = Users(db, passwords, self.forget_cached)
        self.keys = Keys(db, self.credentials, max_keys_per_project)
        self.members = Members(db, self.roles, self.forget_cached, store)

    def forget_cached(self) -> None:
        """Drop cached keys and roles (after some were deleted)."""
        self.credentials.forget()
        self.roles.forget()

"""Identity: users, access keys, roles and the audit log, wired together once per process.

Each idea has its own module (`users`, `keys`, `members`, `audit`; checking credentials and
looking roles up is `berth.access`). `Identity` holds one of each, sharing the short-lived
caches that access checks read, and keeps the calls the CLI, the server and the content
surfaces make on it (`services.identity.record(...)`, `create_user(...)`, ...).
"""

from __future__ import annotations

from argon2 import PasswordHasher

from berth.access.credentials import Credentials
from berth.access.keyring import Keyring
from berth.access.roles import Roles
from berth.metadata.database import Database
from berth.services.audit import AuditLog
from berth.services.keys import CreatedKey, Keys
from berth.services.members import Members
from berth.services.users import Users

__all__ = ["CreatedKey", "Identity"]


class Identity:
    def __init__(self, db: Database, keyring: Keyring, max_keys_per_project: int) -> None:
        self.db = db
        passwords = PasswordHasher()  # argon2id
        self.credentials = Credentials(db, keyring, passwords)
        self.roles = Roles(db)
        self.audit = AuditLog(db)
        self.users = Users(db, passwords, self.forget_cached)
        self.keys = Keys(db, self.credentials, max_keys_per_project)
        self.members = Members(db, self.roles, self.forget_cached)

        # The calls made on `services.identity` by the CLI, the server, the content surfaces
        # and the tests' fixtures.
        self.record = self.audit.record
        self.audit_entries = self.audit.entries
        self.start = self.audit.start
        self.stop = self.audit.stop
        self.bootstrap_admin = self.users.bootstrap_admin
        self.create_user = self.users.create_user
        self.list_users = self.users.list_users
        self.set_password = self.users.set_password
        self.create_key = self.keys.create_key
        self.list_keys = self.keys.list_keys
        self.set_key_disabled = self.keys.set_key_disabled
        self.delete_key = self.keys.delete_key
        self.add_member = self.members.add_member
        self.remove_member = self.members.remove_member
        self.list_members = self.members.list_members
        self.grant = self.members.grant
        self.revoke = self.members.revoke
        self.project_roles = self.roles.project_roles

    def forget_cached(self) -> None:
        """Drop cached keys and roles (after some were deleted)."""
        self.credentials.forget()
        self.roles.forget()

"""Reads about users and bindings."""

from users_app.models import UserEmailBinding, UserTag


def scope_counts(*, bind_id: str) -> dict[str, int]:
    """How many bindings and tags are scoped to a bind_id (what deleting a channel removes)."""
    return {
        "bindings": UserEmailBinding.objects.filter(bind_id=bind_id).count(),
        "tags": UserTag.objects.filter(bind_id=bind_id).count(),
    }

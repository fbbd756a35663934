"""django-import-export resources: the export of bindings to .xlsx and .csv."""

from typing import Any

from import_export import fields, resources

from users_app.models import UserEmailBinding
from users_app.reports import escape_formula


class BindingResource(resources.ModelResource):
    """One row per binding, in the upload's own columns, so an export can be uploaded again."""

    userid = fields.Field(attribute="user__userid", column_name="userid")
    email = fields.Field(attribute="email", column_name="email")
    bind_id = fields.Field(attribute="bind_id", column_name="bind_id")

    class Meta:
        model = UserEmailBinding
        fields = ("userid", "email", "bind_id")
        export_order = ("userid", "email", "bind_id")

    def export_field(self, field: Any, instance: Any, **kwargs: Any) -> Any:
        # import-export's own escaping only strips a leading "="; quote every formula trigger.
        return escape_formula(super().export_field(field, instance, **kwargs))

    def get_queryset(self) -> Any:
        return super().get_queryset().select_related("user")

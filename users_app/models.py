"""Users known by the business's own userid, their email bindings and tags per scope.

A scope (the vendor's bind_id) is `all` or a ChannelKey. It is stored as that string rather than a
foreign key: it is what uploads and the API speak, ChannelKeys never change, and a plain unique
(user, bind_id) key lets one `INSERT … ON CONFLICT` write a million bindings.
"""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

ALL_SCOPE = "all"


class UmsUser(models.Model):
    userid = models.CharField(_("userid"), max_length=64, unique=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")
        ordering = ["userid"]

    def __str__(self) -> str:
        return self.userid


class UserEmailBinding(models.Model):
    """One email address of a user under one bind_id (`all` or a ChannelKey)."""

    # No index of its own: the unique (user, bind_id) constraint starts with it.
    user = models.ForeignKey(
        UmsUser,
        on_delete=models.CASCADE,
        related_name="bindings",
        verbose_name=_("user"),
        db_index=False,
    )
    bind_id = models.CharField(_("bind_id"), max_length=24, default=ALL_SCOPE)
    email = models.CharField(_("email"), max_length=254)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("email binding")
        verbose_name_plural = _("email bindings")
        ordering = ["user__userid", "bind_id"]
        constraints = [
            # Also the index that resolves a channel's addresses: (user, key) and (user, 'all').
            models.UniqueConstraint(fields=["user", "bind_id"], name="binding_one_per_scope"),
        ]
        indexes = [models.Index(fields=["email"], name="binding_email_idx")]
        permissions = [("export_useremailbinding", _("Can export email bindings"))]

    def __str__(self) -> str:
        return f"{self.user_id}/{self.bind_id}: {self.email}"


class UserTag(models.Model):
    user = models.ForeignKey(
        UmsUser,
        on_delete=models.CASCADE,
        related_name="tags",
        verbose_name=_("user"),
        db_index=False,
    )
    bind_id = models.CharField(_("bind_id"), max_length=24, default=ALL_SCOPE)
    tag = models.CharField(_("tag"), max_length=40)

    class Meta:
        verbose_name = _("tag")
        verbose_name_plural = _("tags")
        ordering = ["bind_id", "tag"]
        constraints = [
            models.UniqueConstraint(fields=["user", "bind_id", "tag"], name="tag_unique_per_scope"),
        ]
        # Finding a scope's users by tag: WHERE tag = … AND bind_id IN (key, 'all').
        indexes = [models.Index(fields=["tag", "bind_id"], name="tag_lookup_idx")]

    def __str__(self) -> str:
        return f"{self.bind_id}:{self.tag}"


class ImportJob(models.Model):
    """One uploaded spreadsheet of bindings: validated into staging rows, then applied."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        VALIDATING = "validating", _("Validating")
        VALIDATED = "validated", _("Ready to confirm")
        REJECTED = "rejected", _("Rejected rows: nothing imported")
        APPLYING = "applying", _("Importing")
        DONE = "done", _("Imported")
        FAILED = "failed", _("Failed")
        DISCARDED = "discarded", _("Discarded")

    file = models.FileField(_("file"), upload_to="imports/%Y/%m/")
    original_name = models.CharField(_("file name"), max_length=255)
    default_bind_id = models.CharField(_("default bind_id"), max_length=24, default=ALL_SCOPE)
    status = models.CharField(
        _("status"), max_length=12, choices=Status.choices, default=Status.QUEUED
    )
    total_rows = models.PositiveIntegerField(_("rows"), null=True, blank=True)
    processed_rows = models.PositiveIntegerField(_("rows read"), default=0)
    applied_rows = models.PositiveIntegerField(_("rows imported"), default=0)
    error_count = models.PositiveIntegerField(_("rejected rows"), default=0)
    new_count = models.PositiveIntegerField(_("new"), default=0)
    updated_count = models.PositiveIntegerField(_("changed"), default=0)
    unchanged_count = models.PositiveIntegerField(_("unchanged"), default=0)
    message = models.TextField(_("message"), blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("uploaded by"),
    )
    created_at = models.DateTimeField(_("uploaded"), auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("binding upload")
        verbose_name_plural = _("binding uploads")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.original_name


class ImportRow(models.Model):
    """A validated row of an upload, with its tags, waiting for the upload to be confirmed."""

    # No database constraint: checking a million rows' job at each commit costs seconds, and the
    # rows are only ever found, and deleted, by their job.
    job = models.ForeignKey(
        ImportJob, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    row = models.PositiveIntegerField()
    userid = models.CharField(max_length=64)
    bind_id = models.CharField(max_length=24)
    email = models.CharField(max_length=254)
    # The row's cleaned tags joined by commas, which a cleaned tag never contains: one staging
    # table, so that the rows go to the database as one COPY stream.
    tags = models.TextField(blank=True, default="")

    # No index but the job's: staging is written once in bulk and read in whole sorts, where
    # indexes would only slow the writing down. On PostgreSQL the table is UNLOGGED (0005).

    def __str__(self) -> str:
        return f"{self.job_id}:{self.row}"


class ImportRowError(models.Model):
    """A rejected row of an upload: where and why."""

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="errors")
    row = models.PositiveIntegerField(_("row"))
    column = models.CharField(_("column"), max_length=20)
    value = models.CharField(_("value"), max_length=200, blank=True)
    reason = models.CharField(_("reason"), max_length=300)

    class Meta:
        ordering = ["row", "pk"]
        indexes = [models.Index(fields=["job", "row"], name="importerror_row_idx")]

    def __str__(self) -> str:
        return f"row {self.row}, {self.column}: {self.reason}"

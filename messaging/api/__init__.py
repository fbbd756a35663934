"""The message endpoints of the REST API."""

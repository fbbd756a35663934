"""The console's compose page: drafts, a live preview, a test send, review and send."""

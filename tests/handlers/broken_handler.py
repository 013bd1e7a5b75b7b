"""Fails while loading, so its workers never become ready."""

raise RuntimeError("this handler cannot load")

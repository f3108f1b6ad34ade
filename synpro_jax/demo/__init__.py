"""`synpro demo`: the whole method on a built-in world of synthetic biographies (issue 12, in progress)."""

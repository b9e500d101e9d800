"""The cache service: a persistent, namespaced diskcache store behind fsagent.v1.Cache."""

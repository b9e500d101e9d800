"""Body of one writer process in test_cache_multiprocess (run with runpy in a spawned process).

Globals set by the parent: DIRECTORY, WORKER, COUNT, SESSION_APPENDS.
"""

from fsagent.cache.store import CacheStore

store = CacheStore(DIRECTORY, size_limit=256 * 1024 * 1024)  # noqa: F821 - set by the parent
worker = WORKER  # noqa: F821
for j in range(COUNT):  # noqa: F821
    # Keys only this process writes, and keys every process races on.
    store.put("content", f"own-{worker}-{j}", f"value-{worker}-{j}".encode() * 50, f"fp-{worker}-{j}".encode(), [f"w{worker}/f{j}.md"])
    store.put("search", f"shared-{j}", f"shared-from-{worker}".encode() * 50, b"fp-shared", [f"w{worker}"])
    assert store.get("content", f"own-{worker}-{j}", f"fp-{worker}-{j}".encode()).result == "hit"
for j in range(SESSION_APPENDS):  # noqa: F821
    store.append_session("shared-session", [f'{{"role": "user", "content": "w{worker} m{j}"}}'])
store.close()

-- Post the same 1 MiB body ("x" repeated 1048576 times) on every request.
-- run.py computes the expected SHA-256 from the same bytes.
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"

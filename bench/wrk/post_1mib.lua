-- Post the same 1 MiB body ("x" repeated 1048576 times) on every request.
-- harness/workloads.py builds the same bytes to check each server's digest.
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"

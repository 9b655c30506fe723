-- wrk script: every request is a balanced echo call.
wrk.method = "POST"
wrk.body = '{"op":"echo","message":"hello"}'
wrk.headers["Content-Type"] = "application/json"

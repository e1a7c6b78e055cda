"""envoy.filters.http.lua: scripts run in a real Lua VM (LuaJIT through lupa, as Envoy embeds
LuaJIT). `script.py` loads a script once per worker and runs its envoy_on_request /
envoy_on_response per stream; `wrappers.py` is the stream handle's Python side."""
